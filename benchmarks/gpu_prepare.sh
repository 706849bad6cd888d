#!/usr/bin/env bash
# Gathers, on a machine with the project's environment and package-registry access, what benchmarks/gpu_session.sh
# needs on a bare CUDA machine (Python 3.12, torch, timm, OpenCV and ONNX Runtime installed; no network):
#   .gpu/wheels  wheels of facekit's other imports (lmdb, simplejpeg, pi-heif), no dependencies
#   .gpu/assets  the sample's photos and the SCRFD detector, as FACEKIT_ASSETS lays them out (GPU tests)
#   .gpu/shards  the sample lineage's packed faces, dense landmarks and masked twins included (built here by
#                `dvc repro pack` when data/shards is missing)
# .gpu/ is git-ignored; send it along with the working tree (device `carry`: [".gpu"], ~30 MB).
#
#   FACEKIT_ASSETS=... bash benchmarks/gpu_prepare.sh
set -eu -o pipefail
: "${FACEKIT_ASSETS:?set FACEKIT_ASSETS to the shared assets folder}"
python=${PYTHON:-python3}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/assets/faces .gpu/assets/models
for package in lmdb simplejpeg pi-heif; do
    version=$("$python" -m pip show "$package" 2>/dev/null | sed -n 's/^Version: //p')
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels "$package${version:+==$version}"
done
cp -r "$FACEKIT_ASSETS/faces/deepface" .gpu/assets/faces/
cp "$FACEKIT_ASSETS/models/scrfd_500m_bnkps.onnx" .gpu/assets/models/
[ -f data/shards/index.json ] || dvc repro dvc.yaml:pack
cp -r data/shards .gpu/shards
echo "gpu_prepare: $(ls .gpu/wheels | tr '\n' ' '); $(du -sh .gpu | cut -f1) in .gpu"
