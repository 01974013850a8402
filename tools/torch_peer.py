#!/usr/bin/env python3
"""PyTorch on the work `bge bench` times, for ratios measured in the same run.

A transformers BertModel / XLMRobertaModel (no pooler) with random weights at one of the BGE
shapes (the numbers of src/config.rs, `Shape::config`), fed `bge bench`'s token ids
(src/bench.rs, `inputs`: per sequence [CLS], ids uniform in [1000, vocab - 1] from SplitMix64,
[SEP]; all of length SEQ, or with --ragged uniform in [max(SEQ/4, 2), SEQ] and padded), then
CLS pooling and L2 normalisation as FlagEmbedding does. One timed call is what one `bge bench`
pass is: token ids from the host in, normalised vectors on the host out, the device waited
for before the clock stops; median_s is the median of --iters such calls after --warmup.

Precision: f32 with TF32 off (torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32 = False), so both sides do fp32 arithmetic; f16 weights and
activations. Attention is transformers' --attn implementation (default sdpa) in both.

Prints one JSON line with `bge bench`'s field names (system "torch"): device, adapter, shape,
batch, seq, dtype, median_s, min_s, iters, tokens_per_s (real tokens), padded_tokens_per_s
(BATCH x SEQ), gflops (useful FLOPs, `ModelConfig::flops`: per sequence of n tokens
n * L * (8h^2 + 4h*ffn + 4nh)), checksum (sum of the vectors), peak_rss_bytes, and on CUDA
device_activation_peak_bytes (the most torch's allocator held during the calls beyond what it
held before them: weights and inputs) and device_peak_bytes (all of it). A failure prints one
JSON line with "error" and exits 1.

  python3 tools/torch_peer.py --shape bge-base --batch 256 --seq 128 --dtype f16 --device cuda
"""

import argparse
import json
import platform
import resource
import sys
import time

# src/config.rs, Shape::config: the released bge-*-en-v1.5 and bge-m3 configs.
SHAPES = {
    "bge-small": dict(arch="bert", hidden=384, layers=12, heads=12),
    "bge-base": dict(arch="bert", hidden=768, layers=12, heads=12),
    "bge-large": dict(arch="bert", hidden=1024, layers=24, heads=16),
    "bge-m3": dict(arch="xlm-roberta", hidden=1024, layers=24, heads=16),
}


class Refused(Exception):
    """A request this script cannot run, said in one line without a traceback."""


def model_config(shape, layers):
    """The encoder hyper-parameters of `shape`, with `layers` layers if given."""
    s = dict(SHAPES[shape])
    s["ffn"] = 4 * s["hidden"]
    if s["arch"] == "bert":
        s.update(vocab=30522, max_positions=512, type_vocab=2, pad=0, eps=1e-12, cls=101, sep=102)
    else:
        # XLM-R: position ids start at pad + 1, so 8194 positions hold 8192 tokens
        # (modeling_xlm_roberta.py, create_position_ids_from_input_ids).
        s.update(vocab=250002, max_positions=8194, type_vocab=1, pad=1, eps=1e-5, cls=0, sep=2)
    if layers is not None:
        s["layers"] = layers
    return s


def max_tokens(c):
    """ModelConfig::max_tokens: the positions left after XLM-R's reserved ones."""
    return c["max_positions"] - (c["pad"] + 1 if c["arch"] == "xlm-roberta" else 0)


def flops(c, n):
    """ModelConfig::flops: encoder FLOPs of one sequence of n tokens."""
    h, f = c["hidden"], c["ffn"]
    return n * c["layers"] * (8.0 * h * h + 4.0 * h * f + 4.0 * n * h)


class SplitMix64:
    """src/model/mod.rs SplitMix64, so both sides see the same token ids."""

    MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed & self.MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def range(self, lo, hi):
        """Uniform in lo..=hi, with the same modulo bias as bge."""
        return lo + self.next_u64() % (hi - lo + 1)


def token_ids(c, batch, seq, ragged, seed):
    """bench.rs `inputs`: rows of ids (unpadded) and their lengths."""
    rng = SplitMix64(seed)
    first_plain = min(1000, c["vocab"] - 1)
    rows = []
    for _ in range(batch):
        n = rng.range(max(seq // 4, 2), seq) if ragged else seq
        ids = []
        for t in range(n):
            if t == 0:
                ids.append(c["cls"])
            elif t == n - 1:
                ids.append(c["sep"])
            else:
                ids.append(rng.range(first_plain, c["vocab"] - 1))
        rows.append(ids)
    return rows


def build_encoder(c, attn, seed, device):
    """transformers' encoder at shape `c` with its own random init, built on `device`."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    common = dict(
        vocab_size=c["vocab"],
        hidden_size=c["hidden"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        intermediate_size=c["ffn"],
        hidden_act="gelu",
        max_position_embeddings=c["max_positions"],
        type_vocab_size=c["type_vocab"],
        pad_token_id=c["pad"],
        layer_norm_eps=c["eps"],
        attn_implementation=attn,
    )
    if c["arch"] == "bert":
        config, model_class = transformers.BertConfig(**common), transformers.BertModel
    else:
        config = transformers.XLMRobertaConfig(bos_token_id=0, eos_token_id=2, **common)
        model_class = transformers.XLMRobertaModel
    torch.manual_seed(seed)
    # Built where it runs: initialising bge-m3's 568M parameters on the host takes long.
    with torch.device(device):
        model = model_class(config, add_pooling_layer=False)
    return model.eval()


def run(args):
    import torch
    import transformers

    c = model_config(args.shape, args.layers)
    if not 2 <= args.seq <= max_tokens(c):
        raise Refused(f"sequence length {args.seq} is outside 2..={max_tokens(c)} for this shape")
    if args.batch < 1 or args.iters < 1 or (args.layers is not None and args.layers < 1):
        raise Refused("the batch, the iterations and the layers must be at least 1")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise Refused("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = {"f32": torch.float32, "f16": torch.float16}[args.dtype]
    device = torch.device(args.device)

    start = time.perf_counter()
    model = build_encoder(c, args.attn, args.seed, device).to(device=device, dtype=dtype)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start

    rows = token_ids(c, args.batch, args.seq, args.ragged, args.seed)
    lens = [len(r) for r in rows]
    ids = torch.full((args.batch, args.seq), c["pad"], dtype=torch.long)
    mask = torch.zeros((args.batch, args.seq), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    if cuda:
        ids, mask = ids.pin_memory(), mask.pin_memory()

    def embed():
        h = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        return torch.nn.functional.normalize(h[:, 0].float(), dim=-1).cpu()

    def timed():
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = embed()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    if cuda:
        torch.cuda.synchronize()
        held_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for _ in range(args.warmup):
            timed()
        runs = [timed() for _ in range(args.iters)]
    times = sorted(t for t, _ in runs)
    # bench.rs takes times[len / 2]: the upper median for an even count.
    median = times[len(times) // 2]
    checksum = float(runs[-1][1].double().sum())
    tokens = sum(lens)
    line = {
        "system": "torch",
        "device": "gpu" if cuda else "cpu",
        "adapter": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
        "backend": f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"attention {model.config._attn_implementation}, "
        f"tf32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
        "shape": args.shape,
        "batch": args.batch,
        "seq": args.seq,
        "ragged": args.ragged,
        "dtype": args.dtype,
        "threads": 1 if cuda else torch.get_num_threads(),
        "median_s": median,
        "min_s": times[0],
        "iters": len(times),
        "tokens_per_s": tokens / median,
        "padded_tokens_per_s": args.batch * args.seq / median,
        "gflops": sum(flops(c, n) for n in lens) / median / 1e9,
        "checksum": checksum,
        "weights": "random",
        "layers": c["layers"],
        "attention": model.config._attn_implementation,
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
        "model_build_s": build_s,
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_activation_peak_bytes": None,
        "device_peak_bytes": None,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        line["device_activation_peak_bytes"] = peak - held_before
        line["device_peak_bytes"] = peak
    return line


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--ragged", action="store_true")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, help="only the first this many layers (as bge bench --layers)")
    p.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own)")
    p.add_argument("--attn", default="sdpa", help="transformers' attn_implementation")
    args = p.parse_args()
    try:
        line = run(args)
    except Exception as e:  # one JSON line for the caller's log; a bug's traceback on stderr
        if not isinstance(e, Refused):
            import traceback

            traceback.print_exc()
        print(json.dumps({"system": "torch", "shape": args.shape, "batch": args.batch,
                          "seq": args.seq, "dtype": args.dtype, "device": args.device,
                          "error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
