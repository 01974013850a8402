#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (an NVIDIA H100/H200 reached through Vulkan;
# shared/notes/gpu-facts.md has the setup and what was measured there before).
#
#   tools/gpu_check.sh prepare   here, no GPU needed: the release build, then `bge` and the GPU
#                                test binaries (tests/kernels.rs, tune.rs, shaders.rs) stripped
#                                and gzipped into target/gpu-check/, the Vulkan loader debs into
#                                .gl/, and the size of all that will travel (64 MiB at most).
#   tools/gpu_check.sh [run]     there, from the repo root, with target/gpu-check and .gl
#                                carried: `bge devices`, `bge devices --tune`, the GPU tests, the
#                                encoder bench of bge-small/base/large/m3 at 256 x 128 and bge-m3
#                                at 1 x 8192 in f32 and f16, each followed at once by
#                                tools/torch_peer.py on the same work (so ratios are same-run),
#                                the kernel ladders (`bge bench --op`), and a summary of the
#                                bge / torch tokens_per_s ratios. About 8 minutes at most.
#
# `run` prints JSON lines only on stdout, one per result, each with a "step"; the same lines go
# to $OUT/gpu_check.jsonl, and every command's own output to $OUT/gpu_check.log, when $OUT is
# set. A failing step gets "rc" (124: cut at its time limit) and the run goes on; a step that
# would pass the time budget is cut short, or reported with "not_run".
#
# Environment:
#   GPU_CHECK_SKIP_BUILD=1  prepare: package target/release/bge and the newest test binaries
#                           already built instead of building.
#   GPU_CHECK_QUICK=1       run: a dry run on any adapter (lavapipe here): batch 2 x seq 16
#                           (bge-m3 long: 1 x 64), one layer, torch on the CPU, looser limits.
#   GPU_CHECK_STEPS         run: which of devices,tune,tests,bench,ops (default: all).
#   GPU_CHECK_BUDGET_S      run: seconds for all steps (default 450; quick 3600).
#   PYTHON                  run: the python with torch and transformers (default python3).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
pack=target/gpu-check
test_names=(kernels tune shaders)
# What the device tool lets travel: the working tree and the carried paths, 64 MiB in all.
travel_limit_mib=62

# The JSON side of both modes: python3 is on both machines, jq is not.
read -r -d '' PYJSON <<'PY'
import json, re, sys

def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""

def out(obj):
    print(json.dumps(obj), flush=True)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "step":
    # step KIND NAME RC WALL_S LIMIT_S STDOUT STDERR EXTRA_JSON: one line per result.
    kind, name, rc, wall, limit, stdout, stderr, extra = args
    rc, wall, extra = int(rc), int(wall), json.loads(extra)
    head = {"step": name, **extra}
    text, err = read(stdout), read(stderr)
    tail = err.strip()[-3000:]
    if rc in (124, 137):
        tail = f"cut at its time limit of {limit} s; " + tail[-2000:]
    if kind == "json":
        lines = []
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                lines.append(obj)
        for obj in lines:
            out({**head, **obj, "rc": rc, "wall_s": wall})
        if not lines:
            out({**head, "rc": rc, "wall_s": wall, "error": tail or "no output"})
    elif kind == "text":
        line = {**head, "rc": rc, "wall_s": wall, "text": text[-20000:]}
        if rc != 0:
            line["error"] = tail
        out(line)
    elif kind == "test":
        # libtest: "test NAME ... FAILED" and "test result: ok. 3 passed; 0 failed; 1 ignored".
        line = {**head, "rc": rc, "wall_s": wall, "passed": None, "failed": None}
        m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
        if m:
            line.update(passed=int(m[1]), failed=int(m[2]), ignored=int(m[3]))
        line["failures"] = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
        if rc != 0:
            # Each panic's place and first line; the whole output is in the log.
            panics = re.findall(r"panicked at (\S+):\n([^\n]{0,300})", text + err)
            line["error"] = [f"{at}: {msg}" for at, msg in panics][:20] or tail[-1500:]
        out(line)
elif mode == "skipped":
    name, why, extra = args
    out({"step": name, **json.loads(extra), "not_run": why})
elif mode == "setup":
    # setup BUILD_JSON LOADER DRIVER_FILES LINK NVIDIA_SMI QUICK
    build, loader, driver_files, link, smi, quick = args
    try:
        build = json.loads(read(build))
    except ValueError:
        build = None
    out({"step": "setup", "build": build, "vulkan_loader": loader,
         "vk_driver_files": driver_files or None, "manifest_dir_link": link or None,
         "nvidia_smi": smi.strip() or None, "quick": quick == "1"})
elif mode == "field":
    # field FILE KEY: one string field of a JSON file, empty when absent.
    try:
        print(json.loads(read(args[0])).get(args[1]) or "")
    except ValueError:
        print("")
elif mode == "summary":
    # summary RESULTS ELAPSED_S: bge / torch tokens_per_s per pair, tests, failed steps.
    results, elapsed = args
    lines = []
    for line in read(results).splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    pairs = {}
    for l in lines:
        if l.get("step") == "bench" and "pair" in l:
            pairs.setdefault(l["pair"], {})[l.get("system")] = l
    ratios = []
    for pair, sides in pairs.items():
        # pair: "SHAPE BATCHxSEQ DTYPE"
        shape, rows, dtype = pair.split()
        batch, seq = map(int, rows.split("x"))
        bt = sides.get("bge", {}).get("tokens_per_s")
        tt = sides.get("torch", {}).get("tokens_per_s")
        ratios.append({"shape": shape, "batch": batch, "seq": seq, "dtype": dtype,
                       "bge_tokens_per_s": bt, "torch_tokens_per_s": tt,
                       "ratio": bt / tt if bt and tt else None})
    tests = {l["binary"]: {k: l.get(k) for k in ("rc", "passed", "failed", "failures")}
             for l in lines if l.get("step") == "test"}
    failed = sorted({" ".join(str(l[k]) for k in ("step", "pair", "system", "binary", "op", "dtype")
                              if k in l)
                     for l in lines if l.get("rc", 0) != 0 or "not_run" in l})
    out({"step": "summary", "elapsed_s": int(elapsed), "ratios": ratios, "tests": tests,
         "failed_or_not_run": failed})
PY

pyjson() { python3 -c "$PYJSON" "$@"; }

# ------------------------------------------------------------------------------- prepare
# A subshell, for its EXIT trap.
prepare() (
    local tmp
    tmp=$(mktemp -d) || return 1
    trap 'rm -rf "$tmp"' EXIT
    local -A built=()
    local name file
    if [ -n "${GPU_CHECK_SKIP_BUILD:-}" ]; then
        local release=${CARGO_TARGET_DIR:-target}/release
        echo "GPU_CHECK_SKIP_BUILD: packaging what $release already holds" >&2
        built[bge]=$release/bge
        for name in "${test_names[@]}"; do
            # The newest build of each test crate: deps/NAME-<16 hex digits>.
            built[$name]=$(find "$release/deps" -maxdepth 1 -type f -perm -u+x -regextype posix-extended \
                -regex ".*/$name-[0-9a-f]{16}" -printf '%T@ %p\n' | sort -rn | head -1 | cut -d' ' -f2-)
        done
    else
        local tests=()
        for name in "${test_names[@]}"; do tests+=(--test "$name"); done
        cargo build --release --bin bge --message-format=json-render-diagnostics >"$tmp/cargo.json" &&
            cargo test --release --no-run --message-format=json-render-diagnostics "${tests[@]}" >>"$tmp/cargo.json" ||
            return 1
        # The executables cargo reports: the bge binary and the test binaries.
        while read -r name file; do
            built[$name]=$file
        done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])' "$tmp/cargo.json")
    fi
    rm -rf "$pack" && mkdir -p "$pack" || return 1
    for name in bge "${test_names[@]}"; do
        if [ ! -x "${built[$name]:-}" ]; then
            echo "prepare: no $name binary found" >&2
            return 1
        fi
        strip -s -o "$tmp/$name" "${built[$name]}" && gzip -9 -n -c "$tmp/$name" >"$pack/$name.gz" || return 1
        echo "$name: ${built[$name]} ($(du -b "${built[$name]}" | cut -f1) bytes) -> $pack/$name.gz ($(du -b "$pack/$name.gz" | cut -f1) bytes)" >&2
    done
    # The test binaries read files under the CARGO_MANIFEST_DIR baked in at compile time (tests/
    # shaders.rs reads shaders/): `run` links it to the carried tree when it does not exist there.
    local dirty=false
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && dirty=true
    python3 -c '
import json, sys
commit, dirty, rustc, manifest_dir, skip = sys.argv[1:6]
print(json.dumps({"commit": commit, "dirty": dirty == "true", "rustc": rustc,
                  "manifest_dir": manifest_dir, "prebuilt": skip != ""}))' \
        "$(git rev-parse HEAD 2>/dev/null)" "$dirty" "$(rustc -V 2>/dev/null)" "$PWD" \
        "${GPU_CHECK_SKIP_BUILD:-}" >"$pack/build.json" || return 1

    # The Vulkan loader (and GL's, as the device tool's README fetches them) for a machine
    # that has only the NVIDIA driver.
    local exclude
    exclude=$(git rev-parse --git-path info/exclude) || return 1
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gl/' "$exclude" 2>/dev/null || echo /.gl/ >>"$exclude"
    if ! compgen -G '.gl/*.deb' >/dev/null; then
        mkdir -p .gl /tmp/amd64/partial
        local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
        apt-get "${o[@]}" update >&2 || return 1
        (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) >&2 || return 1
    fi

    local tree carried gl total
    tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -sb "$pack" | cut -f1)
    gl=$(du -sb .gl | cut -f1)
    total=$((tree + carried + gl))
    mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 2**20:.1f} MiB')" "$1"; }
    echo "travels: working tree $(mib "$tree") + $pack $(mib "$carried") + .gl $(mib "$gl") = $(mib "$total") (limit 64 MiB)"
    if ((total > travel_limit_mib * 1024 * 1024)); then
        echo "prepare: over ${travel_limit_mib} MiB: the device tool would refuse the call" >&2
        return 1
    fi
    echo 'next: the device tool'"'"'s run with command "bash tools/gpu_check.sh", carry [".gl", "target/gpu-check"]'
)

# ------------------------------------------------------------------------------- run
run() {
    local quick=${GPU_CHECK_QUICK:-}
    local steps=",${GPU_CHECK_STEPS:-devices,tune,tests,bench,ops},"
    local budget=${GPU_CHECK_BUDGET_S:-$([ -n "$quick" ] && echo 3600 || echo 450)}
    local python=${PYTHON:-python3}
    local t_start=$SECONDS
    local work
    work=$(mktemp -d /tmp/gpu-check.XXXXXX) || return 1
    local results log
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        results=$OUT/gpu_check.jsonl log=$OUT/gpu_check.log
        export BGE_CACHE_DIR=$OUT/cache
    else
        results=$work/results.jsonl log=$work/gpu_check.log
        export BGE_CACHE_DIR=$work/cache
    fi
    : >"$results"
    : >"$log"
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
    echo "gpu_check: results in $results, log in $log" >&2

    if ! compgen -G "$pack/*.gz" >/dev/null; then
        pyjson skipped setup "no $pack/*.gz: run tools/gpu_check.sh prepare here and carry $pack" '{}' | tee -a "$results"
        return 1
    fi
    local bin=$work/bin f
    mkdir -p "$bin"
    for f in "$pack"/*.gz; do
        gunzip -c "$f" >"$bin/$(basename "$f" .gz)" && chmod +x "$bin/$(basename "$f" .gz)"
    done

    # Vulkan: the loader from .gl unless one is installed; the NVIDIA driver's manifest named
    # outright if no hardware adapter appears without it.
    local loader=present
    if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
        loader=missing
        if compgen -G '.gl/*.deb' >/dev/null; then
            for f in .gl/*.deb; do dpkg -x "$f" /; done
            ldconfig
            loader=unpacked
        fi
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    hardware_adapter() { timeout 30 "$bin/bge" devices 2>>"$log" | grep -Eq '\[(DiscreteGpu|IntegratedGpu|VirtualGpu),'; }
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ] && ! hardware_adapter; then
        export VK_DRIVER_FILES=$icd
    fi
    # The test binaries find shaders/ and tests/fixtures/ under the manifest dir of the build.
    local baked link=
    baked=$(pyjson field "$pack/build.json" manifest_dir)
    if [ -n "$baked" ] && [ ! -e "$baked" ]; then
        mkdir -p "$(dirname "$baked")" && ln -s "$PWD" "$baked" && link="$baked -> $PWD"
    fi
    local smi=
    command -v nvidia-smi >/dev/null &&
        smi=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1)
    pyjson setup "$pack/build.json" "$loader" "${VK_DRIVER_FILES:-}" "$link" "$smi" "${quick:+1}" | tee -a "$results"

    # step KIND NAME CAP EXTRA_JSON COMMAND...: COMMAND under `timeout`, its results as JSON
    # lines (KIND json: its own JSON lines; text: its text; test: libtest's counts).
    step() {
        local kind=$1 name=$2 cap=$3 extra=$4
        shift 4
        local left=$((budget - (SECONDS - t_start) - 10))
        local limit=$((cap < left ? cap : left))
        if ((limit < 15)); then
            pyjson skipped "$name" "out of time (budget ${budget}s)" "$extra" | tee -a "$results"
            return
        fi
        printf '\n== %s %s (limit %ss): %s\n' "$name" "$extra" "$limit" "$*" >>"$log"
        local t0=$SECONDS rc
        timeout -k 10 "$limit" "$@" >"$work/stdout" 2>"$work/stderr"
        rc=$?
        cat "$work/stdout" "$work/stderr" >>"$log"
        pyjson step "$kind" "$name" "$rc" "$((SECONDS - t0))" "$limit" "$work/stdout" "$work/stderr" "$extra" |
            tee -a "$results"
        echo "gpu_check: $name $extra: rc $rc, $((SECONDS - t0)) s" >&2
    }

    local slow=1 rows=(256 128) tune_shape=bge-base
    local pairs=("bge-small 256 128" "bge-base 256 128" "bge-large 256 128" "bge-m3 256 128" "bge-m3 1 8192")
    local bench_args=(--warmup 2 --iters 5) torch_args=(--device cuda)
    if [ -n "$quick" ]; then
        slow=6 rows=(2 16) tune_shape=bge-small
        pairs=("bge-small 2 16" "bge-base 2 16" "bge-large 2 16" "bge-m3 2 16" "bge-m3 1 64")
        bench_args=(--warmup 1 --iters 2 --layers 1) torch_args=(--device cpu)
    fi
    local bge=$bin/bge

    if [[ $steps == *,devices,* ]]; then
        step text devices $((30 * slow)) '{}' "$bge" devices
    fi
    if [[ $steps == *,tune,* ]]; then
        step text tune $((90 * slow)) "{\"shape\": \"$tune_shape\"}" "$bge" devices --tune --shape "$tune_shape"
    fi
    if [[ $steps == *,tests,* ]]; then
        local name cap
        for name in "${test_names[@]}"; do
            case $name in kernels) cap=120 ;; tune) cap=60 ;; *) cap=30 ;; esac
            step test test $((cap * slow)) "{\"binary\": \"$name\"}" "$bin/$name"
        done
    fi
    if [[ $steps == *,bench,* ]]; then
        local pair shape batch seq dtype
        for pair in "${pairs[@]}"; do
            read -r shape batch seq <<<"$pair"
            for dtype in f32 f16; do
                local pair_json="\"pair\": \"$shape ${batch}x$seq $dtype\""
                local same=(--shape "$shape" --batch "$batch" --seq "$seq" --dtype "$dtype" "${bench_args[@]}")
                step json bench $((75 * slow)) "{$pair_json, \"system\": \"bge\"}" \
                    "$bge" -v bench --device gpu "${same[@]}"
                step json bench $((60 * slow)) "{$pair_json, \"system\": \"torch\"}" \
                    "$python" tools/torch_peer.py "${torch_args[@]}" "${same[@]}"
            done
        done
    fi
    if [[ $steps == *,ops,* ]]; then
        # Each version of each kernel ladder at bge-base's classes with 256 x 128 rows (matmul:
        # m = 32768 rows of n x k = 768x2304, 768x768, 768x3072, 3072x768; attention: 12 heads
        # of 64 in sequences of 128). There is no flag for a 4096^3 product: the cooperative-
        # matrix version's GFLOP/s at these classes stands for it.
        local op dtype
        for op in matmul attention; do
            for dtype in f32 f16; do
                step json ops $((45 * slow)) "{\"dtype\": \"$dtype\"}" "$bge" -v bench --op "$op" --device gpu \
                    --shape "$tune_shape" --batch "${rows[0]}" --seq "${rows[1]}" --dtype "$dtype" --iters 5
            done
        done
    fi
    pyjson summary "$results" "$((SECONDS - t_start))" | tee -a "$results"
    rm -rf "$bin" "$work/stdout" "$work/stderr"
}

case ${1:-run} in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: tools/gpu_check.sh [prepare|run]" >&2
    exit 2
    ;;
esac
