#!/usr/bin/env bash
# A short follow-up probe for a lent device: where a BERT-base ImageBERT training step spends its GPU
# time (profiler, eager), the compiled step without the attention mask (flash attention's upper bound),
# and coco-r50-fpn end to end. Writes probe_*.log under $OUT.
set -u
OUT=${OUT:-/tmp/lait-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
timeout 50 $PY benchmarks/bench_train.py --preset base --device cuda --skip-baseline --steps 5 --warmup 2 --profile 30 \
    2>&1 | tee "$OUT/probe_profile.log"
timeout 110 $PY benchmarks/bench_train.py --preset base --device cuda --compile --no-mask --skip-baseline --steps 10 \
    --warmup 3 2>&1 | tee "$OUT/probe_nomask.log"
timeout 55 $PY benchmarks/bench_features.py --device cuda --detectors coco-r50-fpn --images 256 --batch-size 64 \
    --num-workers 14 --repeats 1 2>&1 | tee "$OUT/probe_coco.log"
