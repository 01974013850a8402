#!/usr/bin/env bash
# Side-by-side CPU comparison of `bge bench` with the peers of shared/tools/peers (PyTorch,
# ONNX Runtime plain and fused, and candle when CANDLE names a built candle-peer binary), one
# configuration at a time, each system right after the other, after waiting for an idle
# machine. Appends JSON lines to $OUT. ROUNDS=n goes through the configurations n times (the
# single-call latency rows move by 10-30% from one minute to the next on a shared machine:
# tools/compare_table.py then takes the median of the per-round ratios).
# BASELINE=path/to/another/bge also times that binary (e.g. an older commit's) beside this
# one in every round, its lines marked "system": "bge-baseline". bf16 is timed where the CPU
# has AVX-512 BF16.
#
#   PEERS=../shared/tools/peers PYTHON=/tmp/peerenv/bin/python OUT=/tmp/compare.jsonl \
#       bash tools/compare_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-../shared/tools/peers}
PYTHON=${PYTHON:-/tmp/peerenv/bin/python}
OUT=${OUT:-/tmp/compare.jsonl}
THREADS=${THREADS:-2}
SYSTEMS=${SYSTEMS:-torch,ort,ort-fused}
ROUNDS=${ROUNDS:-1}
BASELINE=${BASELINE:-}
BGE=target/release/bge
cargo build --release --quiet
DTYPES="f32"
grep -qw avx512_bf16 /proc/cpuinfo && DTYPES="f32 bf16"

# shape batch seq extra-flags
CONFIGS=${CONFIGS:-"bge-small 32 128 -
bge-small 32 128 --ragged
bge-small 1 32 -
bge-base 32 128 -
bge-base 32 128 --ragged
bge-base 1 32 -"}

# Every configuration once, each system right after the other.
one_round() {
    while read -r shape batch seq extra; do
        [ "$extra" = "-" ] && extra=""
        # A single short sequence takes milliseconds: time many more calls.
        if [ "$batch" = 1 ]; then runs="--warmup 10 --iters 100"; else runs="--warmup 2 --iters 10"; fi
        "$PYTHON" "$PEERS/quiet.py" wait --max-wait 600 || echo "machine not idle; timing anyway" >&2
        for dtype in $DTYPES; do
            $BGE bench --shape "$shape" --batch "$batch" --seq "$seq" $extra --device cpu \
                --dtype "$dtype" --threads "$THREADS" $runs >>"$OUT"
            if [ -n "$BASELINE" ]; then
                "$BASELINE" bench --shape "$shape" --batch "$batch" --seq "$seq" $extra \
                    --device cpu --dtype "$dtype" --threads "$THREADS" $runs |
                    sed 's/"system":"bge"/"system":"bge-baseline"/' >>"$OUT"
            fi
        done
        (cd "$PEERS" && "$PYTHON" peer_bench.py --shape "$shape" --batch "$batch" --seq "$seq" \
            $extra --threads "$THREADS" --systems "$SYSTEMS" $runs 2>/dev/null) | grep '^{' >>"$OUT"
        if [ -n "${CANDLE:-}" ]; then
            RAYON_NUM_THREADS=$THREADS "$CANDLE" --shape "$shape" --batch "$batch" --seq "$seq" \
                $extra --threads "$THREADS" $runs 2>/dev/null | grep '^{' >>"$OUT"
        fi
    done <<<"$CONFIGS"
}

for _ in $(seq "$ROUNDS"); do
    one_round
done
