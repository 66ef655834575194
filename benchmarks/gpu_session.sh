#!/usr/bin/env bash
# The GPU measurements of the training/eval (#7) and features (#6) stages, as one short script for a
# lent device (the device image's python3 has torch, torchvision, pyarrow, pillow, tqdm, transformers).
# About 9 minutes on an H200. Writes env.txt, train.{json,log}, features_{vg,coco}.{json,log} under $OUT.
# Each step has its own time limit, so one slow step cannot eat the others' time; bench_train writes its
# JSON after every variant, so a step cut short keeps what it measured.
set -u
OUT=${OUT:-/tmp/lait-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
{ nvidia-smi -L; nproc; $PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"; } 2>&1 | tee "$OUT/env.txt"
# training + eval, BERT-base, batch 512, bf16: which change lets the compiled step beat eager?
#   trunk+nodrop     attention dropout 0 (does dropout keep the compiled step off the fused attention kernels?)
#                    + eval at batch 4,096 (eval has no dropout: this variant's eval figure measures the batch)
#   model            the whole forward + losses compiled (exact masking: static head shapes, no host syncs)
#   trunk+additive   the key mask as an additive bias instead of booleans
#   model+nodrop+additive   everything together
# (trunk alone, the product default, measured 3,372 samples/s / 15,664 pairs/s on the H200 on 2026-11-27)
timeout "${TRAIN_TIMEOUT:-330}" $PY benchmarks/bench_train.py --preset base --device cuda --skip-baseline --steps 10 --warmup 3 \
    --profile 12 --variants ${TRAIN_VARIANTS:-eager trunk+nodrop+eval4096 model trunk+additive model+nodrop+additive} \
    --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
# features: vg with the folded batch norms alone vs + the batched RPN NMS; end to end with JPEGs decoded in
# the workers and on the device (phases in the JSON)
common=(--device cuda --batch-size 64 --num-workers 14 --repeats 2)
timeout "${VG_TIMEOUT:-120}" $PY benchmarks/bench_features.py "${common[@]}" --detectors vg-r101-c4 --images "${VG_IMAGES:-512}" \
    --variants fused fused+rpn --decode workers device --json "$OUT/features_vg.json" 2>&1 | tee "$OUT/features_vg.log"
timeout "${COCO_TIMEOUT:-75}" $PY benchmarks/bench_features.py "${common[@]}" --detectors coco-r50-fpn --images "${COCO_IMAGES:-256}" \
    --variants fused fused+rpn --decode workers device --json "$OUT/features_coco.json" 2>&1 | tee "$OUT/features_coco.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/env.txt"
