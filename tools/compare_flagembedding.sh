#!/usr/bin/env bash
# FlagEmbedding 1.4.2 against bge_rs from Python (tools/compare_flagembedding.py says what is
# measured). This wrapper makes FlagEmbedding's venv, target/venvs/flagembedding, when it is
# missing or its marker (.installed: the pin list) differs from the script's FE_PINS, fetches
# all-MiniLM-L6-v2 into target/models/ when missing, and runs the comparison offline with
# 2 threads (THREADS). Arguments go to the script.
#
#   bash tools/compare_flagembedding.sh                                    # fe and bge, 2,000 texts
#   bash tools/compare_flagembedding.sh --systems fe --texts 200 --rounds 1  # smoke run
#   bash tools/compare_flagembedding.sh --bge-python /path/to/venv/bin/python
#
# The venv is ~6.1 GB (PyPI's Linux torch is the CUDA build) and takes ~3 min to install.
# PYTHON: the interpreter the venv is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
FE_VENV=target/venvs/flagembedding
MODEL_DIR=target/models/all-MiniLM-L6-v2
SCRIPT=tools/compare_flagembedding.py

log() { echo "[compare_flagembedding.sh $(date +%H:%M:%S)] $*" >&2; }

# The venv only when fe is among the systems (the default is both).
systems="fe,bge"
prev=""
for a in "$@"; do
    case "$a" in --systems=*) systems=${a#--systems=} ;; esac
    [ "$prev" = "--systems" ] && systems=$a
    prev=$a
done

if [[ ",$systems," == *",fe,"* ]]; then
    pins=$("$PYTHON" "$SCRIPT" --print-pins)
    if [ "$(cat "$FE_VENV/.installed" 2>/dev/null)" != "$pins" ]; then
        log "creating $FE_VENV: $(echo $pins)"
        rm -rf "$FE_VENV"
        "$PYTHON" -m venv "$FE_VENV"
        # shellcheck disable=SC2086
        "$FE_VENV/bin/pip" install --quiet --disable-pip-version-check $pins
        "$FE_VENV/bin/pip" freeze --disable-pip-version-check > "$FE_VENV/.freeze"
        echo "$pins" > "$FE_VENV/.installed"
        log "$FE_VENV is ready ($(du -sh "$FE_VENV" | cut -f1))"
    fi
fi
[ -f "$MODEL_DIR/config.json" ] || bash tools/fetch_minilm.sh "$MODEL_DIR"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
exec "$PYTHON" "$SCRIPT" --threads "$THREADS" --model "$MODEL_DIR" "$@"
