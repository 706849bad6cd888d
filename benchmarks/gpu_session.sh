#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one run on a CUDA machine, each step under its own time limit
# (at most 9 min 10 s in all, to fit one 10-minute call): the GPU tests, the training MFU table (eager, with
# per-method profiles), MAE compiled, FRA channels-last, the loader ratio on real faces, the multi-crop device
# path. One log per step under $OUT (default gpu-session/, 8 files), the profiles as profiles.tgz. Prepare with
# benchmarks/gpu_prepare.sh first.
#
#   OUT=... bash benchmarks/gpu_session.sh
set -u -o pipefail
OUT=${OUT:-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FACEKIT_ASSETS=${FACEKIT_ASSETS:-$PWD/.gpu/assets}
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $?: $(tail -n 1 "$OUT/$name.log")"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
step gpu_tests 140 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu
step train_eager 140 python3 benchmarks/train.py --device cuda --dtype bf16 --steps 10 --profile "$OUT/profiles"
step train_compiled 120 python3 benchmarks/train.py --device cuda --dtype bf16 --steps 10 --compile --methods mae
step train_fra 40 python3 benchmarks/train.py --device cuda --dtype bf16 --steps 10 --channels-last --methods fra
step train_loader 80 python3 benchmarks/train_loader.py --device cuda --dtype bf16 --shards .gpu/shards \
    --steps 10 --warmup 3 --methods mae,dino,lafs,fra
step augment 30 python3 benchmarks/augment.py --parts multicrop --rounds 3 --shards .gpu/shards
find "$OUT/profiles" -name '*.trace.json' ! -name 'mae_*' -delete 2> /dev/null  # the tables stay; one trace
[ -d "$OUT/profiles" ] && tar czf "$OUT/profiles.tgz" -C "$OUT" profiles && rm -rf "$OUT/profiles"
ls -la "$OUT"
