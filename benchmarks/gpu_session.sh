#!/usr/bin/env bash
# The GPU measurements of the features (#6) and training/eval (#7) stages, as one short script for a
# lent device (the device image's python3 has torch, torchvision, pyarrow, pillow, tqdm, transformers).
# About 7-8 minutes on an H200. Writes env.txt, features_{vg,coco}.{json,log}, train*.{json,log} under $OUT.
# Each step has its own time limit, so one slow step cannot eat the others' time.
set -u
OUT=${OUT:-/tmp/lait-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
{ nvidia-smi -L; nproc; $PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"; } 2>&1 | tee "$OUT/env.txt"
common=(--device cuda --batch-size 64 --num-workers 14 --repeats 2)
# vg: folded batch norms alone vs + the batched RPN NMS; end to end with the faster (phases in the JSON)
timeout "${VG_TIMEOUT:-120}" $PY benchmarks/bench_features.py "${common[@]}" --detectors vg-r101-c4 --images "${VG_IMAGES:-512}" \
    --variants fused fused+rpn --decode workers device --json "$OUT/features_vg.json" 2>&1 | tee "$OUT/features_vg.log"
timeout "${COCO_TIMEOUT:-100}" $PY benchmarks/bench_features.py "${common[@]}" --detectors coco-r50-fpn --images "${COCO_IMAGES:-384}" \
    --variants fused fused+rpn --decode workers device --json "$OUT/features_coco.json" 2>&1 | tee "$OUT/features_coco.log"
# training: eager, compiled (profiled: which kernels the compiled step runs), baseline eager
timeout "${TRAIN_TIMEOUT:-200}" $PY benchmarks/bench_train.py --preset base --device cuda --compile --eager-too \
    --eager-baseline --profile 30 --steps 10 --warmup 3 --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
# does attention dropout keep the compiled step off the fused attention kernels?
timeout "${TRAIN2_TIMEOUT:-110}" $PY benchmarks/bench_train.py --preset base --device cuda --compile --skip-baseline \
    --attention-dropout 0 --steps 10 --warmup 3 --json "$OUT/train_no_attn_dropout.json" 2>&1 | tee "$OUT/train_no_attn_dropout.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/env.txt"
