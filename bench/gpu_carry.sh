#!/usr/bin/env bash
# What a lent GPU machine needs for bench/gpu_session.sh and does not have, prepared here (no device time):
# the wheels of the Python packages missing from its image (Python 3.12, x86-64; torch, numpy, h5py, typer,
# rich, timm, huggingface-hub, safetensors, regex, pyyaml are there), and the small benchmark corpus (it has
# no ffmpeg CLI). Both are git-ignored, and travel with `carry: [".whl", "gpu_corpus"]` (64 MiB in all).
#   bash bench/gpu_carry.sh            # then, on the device: bash bench/gpu_session.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# the versions this project is tested with (pip show here); one version of each
WHEELS=(av==18.1.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 zarr==3.1.6 numcodecs==0.16.6
        donfig==0.8.1.post1 google-crc32c==1.9.0)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "${WHEELS[@]}"
source bench/gpu_corpus.env
python3 bench/extract.py --corpus-only $GPU_CORPUS
rm -rf gpu_corpus/full/replicated-*  # hard-linked copies: gpu_session.sh makes them there
# the device tool carries at most 64 MiB: the checkout's files, the wheels and the corpus
total=$(( $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(du -sb .whl | cut -f1) + $(du -sb gpu_corpus | cut -f1) ))
echo "checkout + .whl + gpu_corpus: $(( total / 1048576 )) MiB of the 64 MiB a device call carries"
if (( total > 64 * 1048576 )); then
  echo "too large: shrink GPU_CORPUS in bench/gpu_corpus.env" >&2
  exit 1
fi
