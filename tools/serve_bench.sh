#!/usr/bin/env bash
# HTTP serving comparison: `bge serve` against the infinity-emb server (0.0.78, its torch
# backend on CPU), both serving all-MiniLM-L6-v2 from target/models/, both pinned to the same
# CPUs (SERVER_CPUS, default 0,1), driven in the same run by tools/loadtest.py (bounded
# closed-loop clients on 127.0.0.1, one ragged 8-256-word text per request, the same seeded
# texts for both servers).
#
# For each concurrency level (CONCURRENCY, default 1,16,128) both servers are measured one
# right after the other, the order alternating from level to level (bge first, then infinity
# first, ...) so that both share the machine's noise; ROUNDS=n repeats the levels n times and
# the table takes medians. Then an overload phase: bge is restarted with
# --max-concurrent-requests MAX_CONCURRENT (default 32) and hit by 4x that many clients
# (OVERLOAD) to count its 429s; infinity (no such limit: it queues) gets the same clients.
# After each overload phase a normal request must still be answered ("healthy_after").
# The load phases run bge with --max-concurrent-requests LOAD_LIMIT (default 2x the largest
# level), so that they are not shed.
#
# Bounded: every loadtest phase stops after REQUESTS requests or DURATION seconds of sending
# (overload: OVERLOAD_REQUESTS / OVERLOAD_DURATION), each server gets START_TIMEOUT seconds
# to become healthy, and the whole script is given TOTAL_BUDGET seconds (default 840): each
# loadtest gets only what is left as its --deadline. With the defaults (20 s phases, 3 levels,
# 2 servers, 2 overload phases) a run takes about 4-6 minutes. Both servers are killed on exit.
#
# Output: raw JSON lines (one meta line, then one per phase) in
# target/serve_bench/serve-DATE.jsonl (RESULTS overrides), server logs beside it, and a
# Markdown table on stdout (`target/venvs/loadtest/bin/python tools/loadtest.py --table FILE`
# prints it again). Ratios are bge/infinity: texts/s > 1 and p99 < 1 favour bge.
#
#   bash tools/serve_bench.sh                                    # both servers, defaults
#   SERVERS=infinity REQUESTS=50 DURATION=5 bash tools/serve_bench.sh   # smoke run, one server
#   BGE=path/to/bge CONCURRENCY=1,16 ROUNDS=3 bash tools/serve_bench.sh
#
# Python environments (created here when missing; target/ is git-ignored):
#   target/venvs/loadtest  aiohttp only, for tools/loadtest.py:
#       python3 -m venv target/venvs/loadtest
#       target/venvs/loadtest/bin/pip install aiohttp==3.14.5
#   target/venvs/infinity  infinity-emb with its own pins (numpy<2, huggingface-hub<1,
#       transformers 4.x, sentence-transformers 3.x), so it needs a venv of its own:
#       python3 -m venv target/venvs/infinity
#       target/venvs/infinity/bin/pip install 'infinity-emb[server,torch]==0.0.78' torch==2.15.0 ...
#     (the exact pins are INFINITY_PKGS below). PyPI's Linux torch wheel is the CUDA build:
#     with its nvidia-* wheels the venv is about 6 GB and takes ~1.5 min to install; it runs
#     on a CPU-only machine. No other index (download.pytorch.org) is needed or reachable.
#     Infinity runs with HF_HUB_OFFLINE=1 (the model is a local directory), telemetry off
#     (DO_NOT_TRACK=1, INFINITY_ANONYMOUS_USAGE_STATS=0), bound to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${SERVERS:-bge,infinity}
BGE=${BGE:-target/release/bge}
BGE_FLAGS=${BGE_FLAGS:-}           # more `bge serve` flags, e.g. "--dtype bf16"
MODEL_DIR=${MODEL_DIR:-target/models/all-MiniLM-L6-v2}
MODEL_NAME=${MODEL_NAME:-all-MiniLM-L6-v2}
DIM=${DIM:-384}
CONCURRENCY=${CONCURRENCY:-1,16,128}
REQUESTS=${REQUESTS:-1000}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-8}
ROUNDS=${ROUNDS:-1}
SEED=${SEED:-0}
MAX_CONCURRENT=${MAX_CONCURRENT:-32}
OVERLOAD=${OVERLOAD:-$((4 * MAX_CONCURRENT))}   # 0: no overload phase
OVERLOAD_REQUESTS=${OVERLOAD_REQUESTS:-100000}
OVERLOAD_DURATION=${OVERLOAD_DURATION:-15}
INFINITY_BATCH=${INFINITY_BATCH:-32}
SERVER_CPUS=${SERVER_CPUS:-0,1}
START_TIMEOUT=${START_TIMEOUT:-240}
TOTAL_BUDGET=${TOTAL_BUDGET:-840}
PYTHON=${PYTHON:-python3}          # the interpreter the venvs are made from (3.9-3.13)
OUT_DIR=target/serve_bench
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-$OUT_DIR/serve-$STAMP.jsonl}

LOAD_VENV=target/venvs/loadtest
INF_VENV=target/venvs/infinity
# What `pip install 'infinity-emb[server,torch]==0.0.78'` resolved to on 2026-12-01 (PyPI),
# pinned so a fresh venv is the one that was tested.
INFINITY_PKGS=("infinity-emb[server,torch]==0.0.78" torch==2.15.0 transformers==4.57.6
  sentence-transformers==3.4.1 huggingface_hub==0.36.2 numpy==1.26.4 tokenizers==0.22.2
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.32.1)

START=$SECONDS
left() { echo $((TOTAL_BUDGET - (SECONDS - START))); }
log() { echo "[serve_bench $(date +%H:%M:%S)] $*" >&2; }
has() { [[ ",$SERVERS," == *",$1,"* ]]; }

# --- environments ------------------------------------------------------------------------
ensure_venv() {  # dir, packages...: a venv whose .installed marker says the install finished
    local dir=$1; shift
    [ "$(cat "$dir/.installed" 2>/dev/null)" = "$*" ] && return 0
    log "creating $dir ($*)"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install --quiet "$@"
    echo "$*" > "$dir/.installed"
}
ensure_venv "$LOAD_VENV" aiohttp==3.14.5
has infinity && ensure_venv "$INF_VENV" "${INFINITY_PKGS[@]}"
[ -f "$MODEL_DIR/config.json" ] || bash tools/fetch_minilm.sh "$MODEL_DIR"
MODEL_ABS=$(cd "$MODEL_DIR" && pwd)
LOADPY="$LOAD_VENV/bin/python tools/loadtest.py"

if has bge; then
    BGE_HELP=$("$BGE" serve --help 2>&1) || { log "no usable '$BGE serve': $BGE_HELP"; exit 1; }
fi

# --- CPUs: servers on SERVER_CPUS; the load generator on the other CPUs when there are any
# (on a 2-core machine it has to share the servers' CPUs).
n_server_cpus=$(taskset -c "$SERVER_CPUS" nproc)
LOAD_PIN=""
other=$("$PYTHON" -c '
import os, sys
server = set()
for part in sys.argv[1].split(","):
    lo, _, hi = part.partition("-")
    server.update(range(int(lo), int(hi or lo) + 1))
print(",".join(str(c) for c in sorted(os.sched_getaffinity(0) - server)))' "$SERVER_CPUS")
[ -n "$other" ] && LOAD_PIN="taskset -c $other"
log "servers on CPUs $SERVER_CPUS ($n_server_cpus), load generator on ${other:-the same CPUs}"

# --- servers -------------------------------------------------------------------------------
declare -A PID PORT
free_port() { "$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

stop_server() {  # name
    local pid=${PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    PID[$1]=""
}
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
    for s in "${!PID[@]}"; do stop_server "$s"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_healthy() {  # name: GET /health answered 200 within START_TIMEOUT, server still alive
    local name=$1 t0=$SECONDS
    while (( SECONDS - t0 < START_TIMEOUT )); do
        kill -0 "${PID[$name]}" 2>/dev/null || { log "$name died; see its log"; return 1; }
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --noproxy '*' \
            "http://127.0.0.1:${PORT[$name]}/health")" = 200 ] && {
            log "$name healthy on port ${PORT[$name]} after $((SECONDS - t0)) s"; return 0; }
        sleep 1
    done
    log "$name not healthy after $START_TIMEOUT s"; return 1
}

start_bge() {  # limit for --max-concurrent-requests
    local port flags=()
    port=$(free_port)
    # Flags that this bge's `serve --help` knows: the concurrency limit, the model name that
    # infinity also serves, and infinity's (sentence-transformers') 256-token truncation of
    # all-MiniLM-L6-v2, so that both embed the same tokens (bge's own default is 512 / 422).
    grep -q -- '--max-concurrent-requests' <<<"$BGE_HELP" && flags+=(--max-concurrent-requests "$1")
    grep -q -- '--served-model-name' <<<"$BGE_HELP" && flags+=(--served-model-name "$MODEL_NAME")
    grep -q -- '--auto-truncate' <<<"$BGE_HELP" && flags+=(--max-input-length 256 --auto-truncate)
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPUS" "$BGE" serve --model "$MODEL_DIR" --device cpu --host 127.0.0.1 \
        --port "$port" "${flags[@]}" $BGE_FLAGS >>"$OUT_DIR/bge-$STAMP.log" 2>&1 &
    PID[bge]=$!; PORT[bge]=$port; BGE_LIMIT=$1
    log "bge serve ${flags[*]} $BGE_FLAGS (pid ${PID[bge]})"
    wait_healthy bge
}

start_infinity() {
    local port
    port=$(free_port)
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 \
    INFINITY_ANONYMOUS_USAGE_STATS=0 OMP_NUM_THREADS=$n_server_cpus \
        taskset -c "$SERVER_CPUS" "$INF_VENV/bin/infinity_emb" v2 --model-id "$MODEL_ABS" \
        --served-model-name "$MODEL_NAME" --engine torch --device cpu \
        --batch-size "$INFINITY_BATCH" --no-compile --no-bettertransformer \
        --no-vector-disk-cache --host 127.0.0.1 --port "$port" --log-level warning \
        >>"$OUT_DIR/infinity-$STAMP.log" 2>&1 &
    PID[infinity]=$!; PORT[infinity]=$port
    wait_healthy infinity
}

# Load generator arguments per server.
api_args() {
    case $1 in
        bge) echo "--api openai --path /v1/embeddings" ;;
        infinity) echo "--api openai --path /embeddings" ;;
    esac
}

run_load() {  # server, loadtest args...: appends its JSON lines to RESULTS
    local name=$1; shift
    local budget; budget=$(left)
    (( budget > 30 )) || { log "budget spent; skipping $name $*"; return 0; }
    # In the background + wait, so that a signal reaches the traps at once (bash runs a trap
    # only after the foreground command ends); cleanup stops it too.
    # shellcheck disable=SC2046,SC2086
    $LOAD_PIN $LOADPY --port "${PORT[$name]}" --label "$name" $(api_args "$name") \
        --model "$MODEL_NAME" --dim "$DIM" --seed "$SEED" --pid "${PID[$name]}" \
        --deadline "$((budget - 10))" "$@" > >(tee -a "$RESULTS") &
    LOAD_PID=$!
    wait "$LOAD_PID" || log "loadtest against $name exited non-zero (see above); going on"
    LOAD_PID=""
}

# --- the run -------------------------------------------------------------------------------
max_level=$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -1)
LOAD_LIMIT=${LOAD_LIMIT:-$((2 * max_level))}
servers=()
has bge && servers+=(bge)
has infinity && servers+=(infinity)
(( ${#servers[@]} )) || { log "SERVERS names neither bge nor infinity"; exit 1; }

inf_version=""
has infinity && inf_version=$("$INF_VENV/bin/pip" show infinity-emb 2>/dev/null | awk '/^Version/{print $2}')
bge_version=""
has bge && bge_version=$("$BGE" --version 2>/dev/null || true)
"$PYTHON" -c 'import json, sys; print(json.dumps({"meta": dict(zip(sys.argv[1::2], sys.argv[2::2]))}))' \
    date "$STAMP" commit "$(git rev-parse --short HEAD 2>/dev/null || echo -)" \
    servers "$SERVERS" bge "$BGE" bge_version "$bge_version" infinity_version "$inf_version" \
    model "$MODEL_DIR" server_cpus "$SERVER_CPUS" load_cpus "${other:-shared}" \
    concurrency "$CONCURRENCY" requests "$REQUESTS" duration_s "$DURATION" rounds "$ROUNDS" \
    seed "$SEED" load_limit "$LOAD_LIMIT" max_concurrent "$MAX_CONCURRENT" overload "$OVERLOAD" \
    infinity_batch "$INFINITY_BATCH" >>"$RESULTS"

has bge && start_bge "$LOAD_LIMIT"
has infinity && start_infinity

flip=0
for _ in $(seq "$ROUNDS"); do
    for c in ${CONCURRENCY//,/ }; do
        order=("${servers[@]}")
        if (( flip && ${#servers[@]} == 2 )); then order=("${servers[1]}" "${servers[0]}"); fi
        flip=$((1 - flip))
        for s in "${order[@]}"; do
            log "$s: $c clients"
            run_load "$s" --concurrency "$c" --requests "$REQUESTS" --duration "$DURATION" \
                --warmup "$WARMUP"
        done
    done
done

if (( OVERLOAD > 0 )); then
    if has bge; then
        # A bge with the small limit, so that OVERLOAD clients are well above it.
        stop_server bge
        start_bge "$MAX_CONCURRENT"
    fi
    for s in "${servers[@]}"; do
        limit=""
        [ "$s" = bge ] && limit="--server-limit $BGE_LIMIT"
        log "$s: overload with $OVERLOAD clients"
        # shellcheck disable=SC2086
        run_load "$s" --concurrency 0 --warmup "$WARMUP" --overload "$OVERLOAD" \
            --overload-requests "$OVERLOAD_REQUESTS" --overload-duration "$OVERLOAD_DURATION" $limit
    done
fi

cleanup
echo
echo "Results: $RESULTS ($((SECONDS - START)) s; ratios are bge/infinity)"
echo
$LOAD_VENV/bin/python tools/loadtest.py --table "$RESULTS"
