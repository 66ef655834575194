#!/usr/bin/env bash
# A short follow-up probe for a lent device: where a BERT-base ImageBERT training step spends its GPU time
# (profiler, eager), the compiled step without the attention mask (flash attention's upper bound), and coco-r50-fpn
# end to end. The steps `profile`, `nomask` and `coco` of gpu_session.sh, so a dry run checks it the same way:
#   LAIT_BENCH_DRY=1 PYTHON=.venv/bin/python OUT=/tmp/lait-dry bash benchmarks/gpu_probe.sh
# Writes probe_profile.log, probe_nomask.log and features_coco.{json,log} (with steps.txt and env.txt) under $OUT.
STEPS=${STEPS:-profile nomask coco} exec bash "$(dirname "$0")/gpu_session.sh"
