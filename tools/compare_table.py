#!/usr/bin/env python3
"""Markdown table of a tools/compare_peers.sh run: one row per configuration, bge (f32 and
bf16, and a baseline binary's where the run has one) beside PyTorch, ONNX Runtime and
candle, and each bge's ratio to the best peer of that row.

    python3 tools/compare_table.py benchmarks/cpu-2026-11-28-run2.jsonl

Throughput rows (batch > 1) compare real tokens per second (higher is better); latency rows
(batch 1) compare the median time of one call (lower is better).

A run of several rounds (`ROUNDS=n`) holds each (configuration, system) n times, in order:
the k-th line of each is round k. A ratio is then taken within each round, against that
round's best peer, and the table gives each system's median value and the median of the
per-round ratios with their range.
"""
import json
import statistics
import sys

PEERS = ["torch", "ort", "ort-fused", "candle"]
ALL_BGE = ["bge f32", "bge bf16", "bge-baseline f32", "bge-baseline bf16"]


def main(path):
    # rows[config][system] = [result of round 0, round 1, ...]
    rows = {}
    for line in open(path):
        r = json.loads(line)
        key = (r["shape"], r["batch"], r["seq"], bool(r.get("ragged")))
        name = r["system"] if not r["system"].startswith("bge") else r["system"] + " " + r["dtype"]
        rows.setdefault(key, {}).setdefault(name, []).append(r)
    present = {name for by in rows.values() for name in by}
    BGE = [c for c in ALL_BGE if c in present]
    cols = BGE + PEERS
    rounds = max(len(runs) for by in rows.values() for runs in by.values())
    extra = " rounds |" if rounds > 1 else ""
    ratio_cols = "".join(f" {c} / best peer |" for c in BGE)
    print("| shape | workload | unit | " + " | ".join(cols) + " |" + ratio_cols + extra)
    print("|" + "---|" * (len(cols) + 3 + len(BGE) + (rounds > 1)))
    for (shape, batch, seq, ragged), by in rows.items():
        latency = batch == 1
        value = (lambda r: r["median_s"] * 1e3) if latency else (lambda r: r["tokens_per_s"])
        n = min(len(by[s]) for s in by)
        ratios = {c: [] for c in BGE}
        for k in range(n):
            peers = [value(by[p][k]) for p in PEERS if p in by]
            if not peers:
                continue
            best = min(peers) if latency else max(peers)
            for c in BGE:
                if c in by:
                    ratios[c].append(value(by[c][k]) / best)
        if not any(ratios.values()):
            continue

        def cell(c):
            return f"{statistics.median(value(r) for r in by[c][:n]):.1f}" if c in by else "-"

        def ratio(c):
            rs = ratios[c]
            if not rs:
                return "-"
            if len(rs) == 1:
                return f"{rs[0]:.2f}"
            return f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"

        work = f"{batch}x{seq}" + (" ragged" if ragged else "")
        unit = "ms (median)" if latency else "tokens/s"
        cells = [cell(c) for c in cols] + [ratio(c) for c in BGE]
        if rounds > 1:
            cells.append(str(n))
        print(f"| {shape} | {work} | {unit} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
