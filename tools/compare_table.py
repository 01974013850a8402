#!/usr/bin/env python3
"""Markdown table of a tools/compare_peers.sh run: one row per configuration, bge (f32 and
bf16) beside PyTorch and ONNX Runtime, and bge's ratio to the best peer of that row.

    python3 tools/compare_table.py benchmarks/cpu-2026-11-28-run2.jsonl

Throughput rows (batch > 1) compare real tokens per second (higher is better); latency rows
(batch 1) compare the median time of one call (lower is better).
"""
import json
import sys

PEERS = ["torch", "ort", "ort-fused", "candle"]


def main(path):
    rows = {}
    for line in open(path):
        r = json.loads(line)
        key = (r["shape"], r["batch"], r["seq"], bool(r.get("ragged")))
        name = r["system"] if r["system"] != "bge" else "bge " + r["dtype"]
        rows.setdefault(key, {})[name] = r
    cols = ["bge f32", "bge bf16"] + PEERS
    print("| shape | workload | unit | " + " | ".join(cols) + " | f32 / best peer | bf16 / best peer |")
    print("|" + "---|" * (len(cols) + 5))
    for (shape, batch, seq, ragged), by in rows.items():
        latency = batch == 1
        value = (lambda r: r["median_s"] * 1e3) if latency else (lambda r: r["tokens_per_s"])
        peers = [value(by[p]) for p in PEERS if p in by]
        if not peers:
            continue
        best = min(peers) if latency else max(peers)
        cells = [f"{value(by[c]):.1f}" if c in by else "-" for c in cols]
        ratios = [f"{value(by[c]) / best:.2f}" if c in by else "-" for c in ["bge f32", "bge bf16"]]
        work = f"{batch}x{seq}" + (" ragged" if ragged else "")
        unit = "ms (median)" if latency else "tokens/s"
        print(f"| {shape} | {work} | {unit} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
