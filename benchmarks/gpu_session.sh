#!/usr/bin/env bash
# The GPU measurements of the features (#6) and training/eval (#7) stages, as one short script for a
# lent device (the device image's python3 has torch, torchvision, pyarrow, pillow, tqdm, transformers).
# Writes env.txt, features_{vg,coco}.{json,log}, train.{json,log} under $OUT (default /tmp/lait-gpu).
set -u
OUT=${OUT:-/tmp/lait-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
{ nvidia-smi -L; nproc; $PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"; } 2>&1 | tee "$OUT/env.txt"
common=(--device cuda --batch-size 64 --num-workers 14 --repeats 2)
timeout "${VG_TIMEOUT:-150}" $PY benchmarks/bench_features.py "${common[@]}" --detectors vg-r101-c4 --images "${IMAGES:-384}" \
    --variants plain fused fused+parity --json "$OUT/features_vg.json" 2>&1 | tee "$OUT/features_vg.log"
timeout "${COCO_TIMEOUT:-60}" $PY benchmarks/bench_features.py "${common[@]}" --detectors coco-r50-fpn --images "${IMAGES:-384}" \
    --json "$OUT/features_coco.json" 2>&1 | tee "$OUT/features_coco.log"
timeout "${TRAIN_TIMEOUT:-220}" $PY benchmarks/bench_train.py --preset base --device cuda --compile --eager-too \
    --eager-baseline --steps 10 --warmup 3 --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/env.txt"
