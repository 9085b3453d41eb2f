#!/usr/bin/env bash
# One GPU session's measurements for issue 5, as one script (a lent GPU machine has minutes, not hours).
#
# The GPU machine has no ffmpeg CLI and no network: the corpus is generated beforehand on another machine
# and travels with the checkout (small: bench/gpu_corpus.env), and each video is then used --replicate times
# (hard links) so each phase runs long enough to time.
#   here:  bash bench/gpu_carry.sh                  (the corpus, and PyAV, open_clip, zarr as wheels under .whl/)
#   there: bash bench/gpu_session.sh OUT_DIR
#          STEPS="b32 l14" bash bench/gpu_session.sh OUT_DIR   runs only those steps (names below)
#          SCALE=4 STEPS="b16 l14_model_bound" bash bench/gpu_session.sh OUT_DIR   4x as many copies of each
#              video, and 4x the time limits: runs of ~40 s, where the decoders' ~0.7 s start-up weighs 2%
# Writes gpu_*.json, overhead.json, nvdec.json and logs.tgz (the full logs) into OUT_DIR; prints each table.
# Step "cold" (not in the default list): a freshly loaded L/14's first run with VFEAT_WARM_UP=0 and 1.
# Steps "start", "load" and "early" (not in the default list): decode processes' start-up, model loading, and a
# command-line run with decoding started during the model load against after it (run "load" first: its weights).
# Step "class_token" (not in the default list): the model pass with the last block for the class token only.
# A dry run on a CPU machine, to check the steps start before device time is spent on them (short runs, cut by
# the time limits): DEVICE=cpu REPLICATE=1 MODEL_BOUND_REPLICATE=1 STEPS="..." bash bench/gpu_session.sh OUT_DIR
set -u
OUT_DIR=${1:-bench/out/gpu}
LOG_DIR=$(mktemp -d)
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
if [ -d .whl ] && ! python3 -c "import av, open_clip, zarr" 2>/dev/null; then  # the carried wheels, where missing
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 - <<'EOF'
import torch, av, open_clip, zarr
from av.codec.hwaccel import hwdevices_available
print("torch", torch.__version__, "pyav", av.__version__, "open_clip", open_clip.__version__, "zarr", zarr.__version__,
      "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0), "hwdevices", hwdevices_available())
EOF
SCALE=${SCALE:-1}
REPLICATE=${REPLICATE:-$(( 60 * SCALE ))}
MODEL_BOUND_REPLICATE=${MODEL_BOUND_REPLICATE:-$(( 20 * SCALE ))}
source "$(dirname "$0")/gpu_corpus.env"
CORPUS="$GPU_CORPUS --replicate $REPLICATE"
COMMON="$CORPUS --device $DEVICE --skip-baseline --repeat 1"
run() {  # name, seconds, args...
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  echo "=== $name"
  timeout "$limit" python3 "$@" > "$LOG_DIR/$name.log" 2>&1
  echo "rc $?"
  grep -v "^\[\|^.other\|^command" "$LOG_DIR/$name.log" | tail -32
  grep "^\[" "$LOG_DIR/$name.log" | tail -3
  tar czf "$OUT_DIR/logs.tgz" -C "$LOG_DIR" .
}
step() { [[ " ${STEPS:-b32 l14 l14_model_bound b16 overhead nvdec b32_nvdec small} " == *" $1 "* ]]; }
# VFEAT_DECODE_THREADS=0: FFmpeg's default threads in every decode worker (before the per-worker share)
step b32_ffmpeg_threads && VFEAT_DECODE_THREADS=0 run gpu_b32_ffmpeg_threads 75 bench/extract.py $COMMON --model ViT-B-32 --precision fp16 --batch-size 256 --skip-small-files --out-json "$OUT_DIR/gpu_b32_ffmpeg_threads.json"
step b32 && run gpu_b32 75 bench/extract.py $COMMON --model ViT-B-32 --precision fp16 --batch-size 256 --skip-small-files --out-json "$OUT_DIR/gpu_b32.json"
step l14 && run gpu_l14 90 bench/extract.py $COMMON --model ViT-L-14 --precision bf16 --batch-size 128 --skip-small-files --out-json "$OUT_DIR/gpu_l14.json"
# the model-bound case: every frame of the 320x240 clips, which 15 decoders deliver faster than ViT-L/14 encodes
step l14_model_bound && run gpu_l14_model_bound 90 bench/extract.py $COMMON --replicate $MODEL_BOUND_REPLICATE --clips-only --fps 25 --model ViT-L-14 --precision bf16 --batch-size 128 --skip-small-files --out-json "$OUT_DIR/gpu_l14_model_bound.json"
step b16 && run gpu_b16 75 bench/extract.py $COMMON --model ViT-B-16 --precision bf16 --batch-size 256 --skip-small-files --out-json "$OUT_DIR/gpu_b16.json"
step nvdec && run nvdec 110 bench/nvdec.py --corpus gpu_corpus --replicate 30 --mixes "${NVDEC_MIXES:-15+0,0+4,0+8,15+4,8+8}" --out-json "$OUT_DIR/nvdec.json"
if step b32_nvdec && python3 -c "import json,sys; c=json.load(open('$OUT_DIR/nvdec.json'))['check']; sys.exit(0 if all(v.get('nvdec_works') for v in c.values()) else 1)" 2>/dev/null; then
  run gpu_b32_nvdec 90 bench/extract.py $COMMON --model ViT-B-32 --precision fp16 --batch-size 256 --hwaccel cuda --skip-small-files --out-json "$OUT_DIR/gpu_b32_nvdec.json"
fi
if step overhead; then  # the pipeline's own overhead at this core count: a stub model (batches normalised on the GPU)
  REP=gpu_corpus/full/replicated-$REPLICATE
  python3 -c "import sys; sys.path.insert(0, 'bench'); import extract as b; from pathlib import Path; r = Path('gpu_corpus/full'); b.replicate({n: r / n for n in ('short', 'tiny', 'long')}, r, $REPLICATE)"
  run overhead 150 bench/overhead.py --workers $(( $(nproc) - 1 )) --decode-threads 1 --rounds 2 --device "${OVERHEAD_DEVICE:-$DEVICE}" \
      --out-json "$OUT_DIR/overhead.json" $REP/short $REP/tiny $REP/long
fi
if step cold; then  # a command-line run's cold start, L/14 model-bound, without and with the warm-up (interleaved)
  python3 -c "import sys; sys.path.insert(0, 'bench'); import extract as b; from pathlib import Path; r = Path('gpu_corpus/full'); b.replicate({'short': r / 'short'}, r, $MODEL_BOUND_REPLICATE)"
  for round in 1 2; do for w in 0 1; do
    VFEAT_WARM_UP=$w run cold_warm_up_${w}_$round 60 bench/profile_e2e.py --cold-only --device $DEVICE --model ViT-L-14 --precision bf16 \
        --batch-size 128 --fps 25 --out /tmp/cold gpu_corpus/full/replicated-$MODEL_BOUND_REPLICATE/short
  done; done
fi
# start-up (not in the default list): decode processes for a caller script that imports torch, vfeat's start
# against plain spawn (15 processes, the one-second clips of gpu_corpus); model loads onto the GPU, open_clip's against vfeat's
step start && run decoder_start 60 bench/decoder_start.py --workers 15 --rounds 2 --clips gpu_corpus/full/tiny --out-json "$OUT_DIR/decoder_start.json"
step load && run model_load 150 bench/model_load.py --models ViT-B-32,ViT-L-14 --device $DEVICE --rounds 2 --out-json "$OUT_DIR/model_load.json"
# a command-line run from its first instant, decoding during the model load or after it (weights saved by "load")
step early && run cold_start 200 bench/cold_start.py --models ViT-B-32,ViT-L-14 --device $DEVICE --rounds 2 \
    --inputs gpu_corpus/full/short gpu_corpus/full/long --out-json "$OUT_DIR/cold_start.json"
# the model pass with the last block for the class token only against every token (not in the default list)
step class_token && run class_token 120 bench/class_token.py --device $DEVICE --precision bf16 --models ViT-B-16,ViT-L-14 \
    --batch-size 256 --rounds 5 --out-json "$OUT_DIR/class_token.json"
step small && run gpu_small 80 bench/extract.py $CORPUS --device $DEVICE --small-files-only --model ViT-B-32 --precision fp16 --batch-size 256 --out-json "$OUT_DIR/gpu_small.json"
exit 0
