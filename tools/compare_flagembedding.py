#!/usr/bin/env python3
"""FlagEmbedding 1.4.2 itself against bge_rs, from Python, on this machine's CPU.

The measurement: the same model directory (default target/models/all-MiniLM-L6-v2), the same
2,000 ragged English texts (8-256 words each, uniform, from the fixed word list below with a
seeded random.Random; the parent makes them once and hands the same file to every worker),
and for each system

    FlagEmbedding.FlagModel(model_dir, pooling_method="mean", use_fp16=False, devices="cpu",
                            normalize_embeddings=True)                        # "fe"
    bge_rs.FlagModel(model_dir, pooling_method="mean", devices="cpu")         # "bge"

timed as the whole `model.encode(texts)` call (default batch size 256, max_length 512), so
tokenization, padding and the conversion to numpy are inside the time. Each system runs in a
fresh process of its own (this script re-invoked with `--worker fe|bge` under that system's
interpreter): load the model (not timed), one warm-up encode of the first 64 texts, then
`encode(all texts)` --repeats times (default 3); the worker reports the median texts/s and
saves the vectors of its last encode to an .npy file. --rounds rounds (default 2) each start
one fresh worker per system, the order alternating (fe, bge, then bge, fe, ...) so that both
share the machine's drift. Before each worker the parent waits (at most --idle-wait seconds)
for an idle machine. Threads: --threads (default 2) for both: torch.set_num_threads and
OMP/MKL_NUM_THREADS for FlagEmbedding, RAYON_NUM_THREADS for bge_rs (which otherwise uses
every core it may run on) and for the tokenizers crate under transformers.

Output: one JSON line per worker run on stdout (and in OUT_DIR/results.jsonl), then one
"summary" line: the median texts/s of each system over the rounds, the ratio bge/fe (of those
medians, and the per-round ratios), and how far the two vector sets are apart (max abs
difference, min cosine over all texts, per round and overall). Progress goes to stderr, each
worker's own stderr to OUT_DIR/<system>-round<k>.log. Every worker is bounded by --timeout
seconds (default 900) and killed with its process group past that.

Interpreters: fe runs under FlagEmbedding's venv, target/venvs/flagembedding/bin/python
(--fe-python); bge under --bge-python (default target/venvs/python/bin/python, a venv with
bge_rs installed). The parent needs only the standard library; the vectors are compared in a
short `--worker compare` process under whichever of the two has numpy.

The FlagEmbedding venv (target/ is git-ignored; ~6.1 GB, because PyPI's Linux torch is the
CUDA build with its nvidia-* wheels; it runs on a CPU-only machine, and no other index is
needed). tools/compare_flagembedding.sh makes it when missing or when FE_PINS below changed
(its marker file target/venvs/flagembedding/.installed holds the pin list):

    python3 -m venv target/venvs/flagembedding
    target/venvs/flagembedding/bin/pip install FlagEmbedding==1.4.2 torch==2.15.0 \\
        transformers==4.57.6 tokenizers==0.22.2 sentence-transformers==5.7.0 \\
        huggingface_hub==0.36.2 numpy==2.4.6 safetensors==0.8.0 accelerate==1.15.0 \\
        peft==0.21.2 datasets==5.0.1

A plain `pip install FlagEmbedding==1.4.2` (PyPI, 2026-12) resolves to transformers 5.24.0,
with which `from FlagEmbedding import FlagModel` fails (its MiniCPM reranker module imports
transformers.modeling_attn_mask_utils, gone in transformers 5), although FlagEmbedding's own
metadata allows transformers<6. Hence transformers 4.57.6 (the newest 4.x; FlagModel passes
`dtype=` to from_pretrained, which needs >= 4.56) and the 4.x-compatible sentence-transformers,
huggingface_hub and tokenizers that pip resolves with it. The whole `pip freeze` of the venv
is kept in target/venvs/flagembedding/.freeze.

What FlagEmbedding does inside encode on the CPU (FlagEmbedding 1.4.2,
inference/embedder/encoder_only/base.py): `model.float()` whenever the device is "cpu", so
it is pure fp32 whatever use_fp16 says (use_fp16=False here makes it fp32 from the load on);
it tokenizes every text unpadded, sorts by length (longest first), then runs one extra
forward pass on the first batch_size sorted texts -- the longest ones -- to find a batch size
that fits in memory (halving by 3/4 on RuntimeError), throws that result away and encodes all
batches. That probe is part of its encode call and so part of its time here; the fe worker
reports its share of the padded tokens ("probe_token_share"). A list of fewer texts than one
batch is therefore encoded twice over.

    bash tools/compare_flagembedding.sh                              # both, 2,000 texts
    bash tools/compare_flagembedding.sh --systems fe --texts 200 --rounds 1   # smoke run
    python3 tools/compare_flagembedding.py --systems bge --bge-python /path/to/venv/bin/python
"""
import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What FlagEmbedding==1.4.2 is installed with (see above). tools/compare_flagembedding.sh
# reads this list through --print-pins: change it here only.
FE_PINS = [
    "FlagEmbedding==1.4.2",
    "torch==2.15.0",
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "sentence-transformers==5.7.0",
    "huggingface_hub==0.36.2",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "accelerate==1.15.0",
    "peft==0.21.2",
    "datasets==5.0.1",
]

from ragged_texts import ragged_text  # noqa: E402  (tools/ is the script's directory)

WARMUP_TEXTS = 64
SYSTEMS = ("fe", "bge")


def make_texts(n, seed):
    rng = random.Random(seed)
    return [ragged_text(rng) for _ in range(n)]


def log(msg):
    print(f"[compare_flagembedding {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


# --- workers (run in a fresh process, under the system's own interpreter) ------------------

def peak_rss_mib():
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_fe(args):
    import torch
    torch.set_num_threads(args.threads)
    import FlagEmbedding
    import transformers
    from FlagEmbedding import FlagModel
    model = FlagModel(args.model, pooling_method="mean", use_fp16=False, devices="cpu",
                      normalize_embeddings=True)
    info = {
        "flagembedding": getattr(FlagEmbedding, "__version__", None) or pkg_version("FlagEmbedding"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": pkg_version("tokenizers"),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_tokenizer": bool(getattr(model.tokenizer, "is_fast", False)),
        "attn_implementation": getattr(model.model.config, "_attn_implementation", None),
        "target_devices": list(model.target_devices),
    }
    return model, info


def fe_after(model, texts, info):
    """Not timed: the model's dtype after encode, and the share of the padded tokens that
    FlagEmbedding's batch-size probe (one extra forward pass on the longest batch) adds."""
    info["model_dtype_after_encode"] = str(next(model.model.parameters()).dtype)
    lengths = sorted((len(ids) for ids in model.tokenizer(
        texts, truncation=True, max_length=512)["input_ids"]), reverse=True)
    bs = model.batch_size
    batches = [lengths[i:i + bs] for i in range(0, len(lengths), bs)]
    padded = sum(len(b) * b[0] for b in batches)
    info["tokens"] = sum(lengths)
    info["padded_tokens"] = padded
    info["probe_token_share"] = round(len(batches[0]) * batches[0][0] / padded, 4)
    info["max_tokens"] = lengths[0]
    info["min_tokens"] = lengths[-1]


def load_bge(args):
    import bge_rs
    model = bge_rs.FlagModel(args.model, pooling_method="mean", devices="cpu")
    return model, {"bge_rs": bge_rs.__version__}


def pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


def run_worker(args):
    with open(args.texts_file) as f:
        texts = json.load(f)
    import numpy as np
    t0 = time.perf_counter()
    model, info = (load_fe if args.worker == "fe" else load_bge)(args)
    load_s = time.perf_counter() - t0
    warm = model.encode(texts[:WARMUP_TEXTS])
    times = []
    vecs = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        vecs = model.encode(texts)
        times.append(time.perf_counter() - t)
    vecs = np.asarray(vecs)
    if args.worker == "fe":
        fe_after(model, texts, info)
    np.save(args.vectors, vecs.astype(np.float32, copy=False))
    med = statistics.median(times)
    norms = np.linalg.norm(vecs.astype(np.float64), axis=1)
    result = {
        "texts": len(texts),
        "repeats": args.repeats,
        "load_s": round(load_s, 3),
        "times_s": [round(t, 4) for t in times],
        "median_s": round(med, 4),
        "texts_per_s": round(len(texts) / med, 2),
        "shape": list(vecs.shape),
        "dtype": str(vecs.dtype),
        "warmup_shape": list(np.asarray(warm).shape),
        "norm_min": round(float(norms.min()), 6),
        "norm_max": round(float(norms.max()), 6),
        "peak_rss_mib": peak_rss_mib(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        **info,
    }
    with open(args.result, "w") as f:
        json.dump(result, f)


def run_compare(args):
    import numpy as np
    a = np.load(args.a).astype(np.float64)
    b = np.load(args.b).astype(np.float64)
    out = {"shape_a": list(a.shape), "shape_b": list(b.shape)}
    if a.shape == b.shape:
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["max_abs_diff"] = float(np.abs(a - b).max())
        out["min_cosine"] = float(cos.min())
        out["mean_cosine"] = float(cos.mean())
        out["worst_text"] = int(cos.argmin())
    with open(args.result, "w") as f:
        json.dump(out, f)


# --- parent -------------------------------------------------------------------------------

def cpu_idle(window):
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v[:8]), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(window)
    t1, i1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_wait, min_idle=0.9, window=3.0):
    """Block until the machine was >= min_idle idle over `window` s, at most max_wait s.
    Returns the last idle fraction seen (None when waiting is off)."""
    if max_wait <= 0:
        return None
    end = time.time() + max_wait
    while True:
        idle = cpu_idle(window)
        if idle >= min_idle or time.time() >= end:
            if idle < min_idle:
                log(f"machine still busy ({idle:.0%} idle) after {max_wait} s: timing anyway")
            return round(idle, 3)


def child_env(threads):
    env = dict(os.environ)
    n = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_DATASETS_OFFLINE="1", DO_NOT_TRACK="1", OMP_NUM_THREADS=n,
               MKL_NUM_THREADS=n, RAYON_NUM_THREADS=n, PYTHONUNBUFFERED="1")
    return env


def run_child(cmd, env, log_path, timeout):
    """Runs cmd in its own process group, stdout+stderr to log_path; kills the group past
    timeout. Returns (rc or "timeout", wall seconds)."""
    t = time.perf_counter()
    with open(log_path, "w") as logf:
        p = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = "timeout"
    return rc, round(time.perf_counter() - t, 1)


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def emit(line, results):
    s = json.dumps(line)
    print(s, flush=True)
    results.write(s + "\n")
    results.flush()


def median_or_none(xs):
    return round(statistics.median(xs), 4) if xs else None


def parent(args):
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        sys.exit(f"--systems: {args.systems!r}; choose from {','.join(SYSTEMS)}")
    model = os.path.abspath(args.model)
    if not os.path.isfile(os.path.join(model, "config.json")):
        sys.exit(f"no model in {model}: bash tools/fetch_minilm.sh {args.model}")
    pythons = {"fe": os.path.abspath(args.fe_python), "bge": os.path.abspath(args.bge_python)}
    for s in systems:
        if not os.access(pythons[s], os.X_OK):
            sys.exit(f"no interpreter for {s}: {pythons[s]} "
                     f"({'bash tools/compare_flagembedding.sh makes it' if s == 'fe' else 'pass --bge-python, a python with bge_rs installed'})")
    out_dir = os.path.abspath(args.out_dir or os.path.join(
        ROOT, "target", "compare_flagembedding", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out_dir, exist_ok=True)

    texts = make_texts(args.texts, args.seed)
    texts_file = os.path.join(out_dir, "texts.json")
    blob = json.dumps(texts)
    with open(texts_file, "w") as f:
        f.write(blob)
    words = [len(t.split()) for t in texts]
    env = child_env(args.threads)
    results = open(os.path.join(out_dir, "results.jsonl"), "a")
    emit({"kind": "meta", "systems": systems, "model": model, "texts": args.texts,
          "seed": args.seed, "texts_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16],
          "words_min": min(words), "words_max": max(words),
          "words_mean": round(sum(words) / len(words), 1), "rounds": args.rounds,
          "repeats": args.repeats, "threads": args.threads, "batch_size": 256,
          "max_length": 512, "warmup_texts": WARMUP_TEXTS, "pythons": {s: pythons[s] for s in systems},
          "out_dir": out_dir, "host_cpus": os.cpu_count(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, results)

    speed = {s: [] for s in systems}     # texts/s per round
    ratios, diffs = [], []
    failed = False
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]
        vec, this = {}, {}
        for s in order:
            idle = wait_idle(args.idle_wait)
            stem = os.path.join(out_dir, f"{s}-round{r}")
            cmd = [pythons[s], os.path.abspath(__file__), "--worker", s, "--model", model,
                   "--texts-file", texts_file, "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--vectors", stem + ".npy",
                   "--result", stem + ".json"]
            log(f"round {r}: {s} ({args.texts} texts x {args.repeats})")
            rc, wall = run_child(cmd, env, stem + ".log", args.timeout)
            line = {"kind": "run", "system": s, "round": r, "position": order.index(s),
                    "idle_before": idle, "wall_s": wall, "rc": rc}
            if rc == 0 and os.path.isfile(stem + ".json"):
                with open(stem + ".json") as f:
                    line.update(json.load(f))
                speed[s].append(line["texts_per_s"])
                this[s] = line["texts_per_s"]
                vec[s] = stem + ".npy"
            else:
                failed = True
                line["log_tail"] = tail(stem + ".log")
                log(f"{s} failed ({rc}); its log: {stem}.log\n{line['log_tail']}")
            emit(line, results)
        if "fe" in vec and "bge" in vec:
            d = compare(vec["fe"], vec["bge"], pythons, env, out_dir, r, args.timeout)
            d.update(kind="diff", round=r)
            emit(d, results)
            diffs.append(d)
        if "fe" in this and "bge" in this:
            ratios.append(this["bge"] / this["fe"])

    summary = {"kind": "summary", "texts": args.texts, "rounds": args.rounds,
               "threads": args.threads}
    for s in systems:
        summary[f"{s}_texts_per_s"] = median_or_none(speed[s])
        summary[f"{s}_texts_per_s_rounds"] = speed[s]
    if summary.get("fe_texts_per_s") and summary.get("bge_texts_per_s"):
        summary["ratio_bge_over_fe"] = round(summary["bge_texts_per_s"] / summary["fe_texts_per_s"], 3)
        summary["ratio_per_round"] = [round(x, 3) for x in ratios]
    ok = [d for d in diffs if "max_abs_diff" in d]
    if ok:
        summary["max_abs_diff"] = max(d["max_abs_diff"] for d in ok)
        summary["min_cosine"] = min(d["min_cosine"] for d in ok)
    if diffs and len(ok) < len(diffs):
        summary["shape_mismatch"] = True
        failed = True
    summary["out_dir"] = out_dir
    emit(summary, results)
    return 1 if failed else 0


def compare(a, b, pythons, env, out_dir, r, timeout):
    res = os.path.join(out_dir, f"diff-round{r}.json")
    for py in (pythons["fe"], pythons["bge"]):
        rc, _ = run_child([py, os.path.abspath(__file__), "--worker", "compare", "--a", a,
                           "--b", b, "--result", res], env, res + ".log", min(timeout, 300))
        if rc == 0:
            with open(res) as f:
                return json.load(f)
    return {"error": "no interpreter could compare the vectors", "log_tail": tail(res + ".log")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default="fe,bge", help="comma list of fe,bge (default both)")
    p.add_argument("--model", default=os.path.join(ROOT, "target/models/all-MiniLM-L6-v2"))
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2,
                   help="fresh processes per system, order alternating (default 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed encode(all texts) calls per process; the median counts (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker process")
    p.add_argument("--idle-wait", type=float, default=120,
                   help="before each worker, wait at most this long for an idle machine (0: off)")
    p.add_argument("--fe-python",
                   default=os.path.join(ROOT, "target/venvs/flagembedding/bin/python"))
    p.add_argument("--bge-python", default=os.path.join(ROOT, "target/venvs/python/bin/python"))
    p.add_argument("--out-dir", help="default target/compare_flagembedding/DATE-TIME")
    p.add_argument("--print-pins", action="store_true",
                   help="print FlagEmbedding's venv pins, one a line, and exit")
    # worker-only arguments
    p.add_argument("--worker", choices=["fe", "bge", "compare"], help=argparse.SUPPRESS)
    p.add_argument("--texts-file", help=argparse.SUPPRESS)
    p.add_argument("--vectors", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--a", help=argparse.SUPPRESS)
    p.add_argument("--b", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.print_pins:
        print("\n".join(FE_PINS))
        return 0
    if args.worker == "compare":
        run_compare(args)
        return 0
    if args.worker:
        run_worker(args)
        return 0
    if args.texts < WARMUP_TEXTS or args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        p.error(f"--texts >= {WARMUP_TEXTS}, --rounds, --repeats and --threads >= 1")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
