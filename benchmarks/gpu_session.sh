#!/usr/bin/env bash
# The GPU measurements of the training/eval (#7) and features (#6) stages, as one short script for a
# lent device (the device image's python3 has torch, torchvision, pyarrow, pillow, tqdm, transformers).
# By default train, eval, vg and selection: their limits add up to 9.8 minutes (one device call may run 10);
# STEPS picks others (coco adds 1, mix 2, buckets 3.3, autotune 4, window 2.5, profile 0.8, nomask 1.8). Writes env.txt, steps.txt (each step's exit
# status: 124 = cut by its time limit), train.{json,log}, eval_order.{json,log}, features_{vg,coco,mix}.{json,log},
# selection.{json,log}, probe_{profile,nomask}.log, buckets.{json,log}, autotune.{json,log}, features_window{0,4096}.{json,log} under $OUT.
# Each step has its own time limit, so one slow step cannot eat the others' time; the benchmarks write their
# JSON after every variant or section, so a step cut short keeps what it measured.
# A dry run, on a machine without a GPU, checks the script before a lent device's minutes go to it:
#   LAIT_BENCH_DRY=1 PYTHON=.venv/bin/python OUT=/tmp/lait-dry bash benchmarks/gpu_session.sh
# runs the same steps (STEPS as above) with the same options, then the options of `tiny` below appended (argparse
# keeps an option's last value): on the CPU, at tiny sizes, each under DRY_TIMEOUT seconds (default 240), with
# torch.compile off (so rpn-compiled records a fallback) unless TORCH_COMPILE_DISABLE=0 (compiling on a CPU takes
# minutes a step: raise DRY_TIMEOUT). The default steps take about a minute on 2 cores, all of them 2.5. It
# writes the same files (env.txt names the dry run); its figures mean nothing, its exit statuses and JSON fields do.
set -u
OUT=${OUT:-/tmp/lait-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
STEPS=" ${STEPS:-train eval vg selection} "  # which steps run (coco, mix, buckets, autotune, window: add them when time allows)
step() { [[ $STEPS == *" $1 "* ]]; }
dry() { [[ ${LAIT_BENCH_DRY:-0} != 0 ]]; }
declare -A tiny=()  # a dry run's options for each step, after the GPU ones
if dry; then
    export TORCH_COMPILE_DISABLE=${TORCH_COMPILE_DISABLE:-1}
    train_tiny="--preset tiny --device cpu --batch-size 4 --eval-batch-size 8 --steps 1 --warmup 1"
    features_tiny="--device cpu --batch-size 2 --num-workers 1 --repeats 1 --images 2 --min-size 64 --max-size 96
        --proposals 10 --width 200 --height 150"
    tiny=([train]="$train_tiny --profile 3" [autotune]="$train_tiny" [probe_profile]="$train_tiny --profile 3"
          [probe_nomask]="$train_tiny"
          [eval_order]="--device cpu --preset tiny --images 6 --batch-size 16"
          [features_vg]="$features_tiny --profile 3" [features_coco]="$features_tiny"
          [features_mix]="$features_tiny --images 4 --width 400"
          [features_window0]="$features_tiny --images 4 --row-group-size 4"
          [features_window4096]="$features_tiny --images 4 --row-group-size 4"
          [selection]="--device cpu --images 2 --proposals 50 --classes 100 --repeats 1"
          [buckets]="--preset tiny --device cpu --batch-size 4 --steps 2 --images 40 --max-regions 10 --feature-dim 32
              --workers 1 --repeats 1")
fi
# run NAME SECONDS COMMAND...: the command under its time limit, its output to $OUT/NAME.log, its exit status to steps.txt
run() {
    local name=$1 limit=$2
    shift 2
    if dry; then
        [[ -v "tiny[$name]" ]] || { echo "gpu_session.sh: no dry-run sizes for step $name" >&2; exit 2; }
        limit=${DRY_TIMEOUT:-240}
        set -- "$@" ${tiny[$name]}  # unquoted: one word per option
    fi
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "$name exit ${PIPESTATUS[0]} (limit ${limit} s)" | tee -a "$OUT/steps.txt"
}
{ if dry; then echo "dry run on the CPU (LAIT_BENCH_DRY=$LAIT_BENCH_DRY; TORCH_COMPILE_DISABLE=$TORCH_COMPILE_DISABLE)"
  else nvidia-smi -L; fi
  nproc; $PY -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, torchvision.__version__)"; } 2>&1 | tee "$OUT/env.txt"
# training + eval, BERT-base, batch 512, bf16 (variants: bench_train.py --help), most wanted first (the JSON is
# written after each, so a step cut short by its limit keeps the variants before it; compiling the first
# whole-model variant takes 70-80 s on an H100, the next ones 35-45 s, a scoring variant 15-20 s; the six
# default variants need about 270 s):
#   model+atenln          the product setting (configs/imagebert-base.yaml: exact masking, compile: true -> the whole
#                         step compiled with opaque LayerNorms), since the night of 2026-11-27 with the last layer on
#                         the rows read only ([CLS] + the masked slots; ~6% of the matrix work less): not yet measured
#   model+atenln+allrows  the same computing every row of the last layer (the same-process baseline), as the H200's
#                         4,306 samples/s and the H100's 3,812-3,834 did
#   model+atenln+fusedln  the product setting with the encoder's dropout + residual + LayerNorm steps as fused Triton
#                         kernels (training config fused_norm: true; model/fused_norm.py): not yet measured
#   trunk+fp8             scoring with `--precision fp8` (static input scales), the last layer on [CLS] only
#   trunk+fp8+allrows     the same on every row, as the H100's 18,378 pairs/s
#   trunk+fp8+res16       float8 scoring with a bf16 residual stream (LayerNorm outputs in bf16): the LayerNorm
#                         kernels read and write float32 residuals, 9.3 of the 55 ms of a float8 pass on the H100
# Step `autotune` (not a default: minutes of compiling): trunk+fp8+autotune, float8 scoring compiled with
# max-autotune: inductor's Triton float8 matmuls against cuBLAS, with GELU and the next layer's quantising fused
# into their epilogues (GELU + quantise was 9.3 of the 55 ms of a float8 pass on the H100).
# Left out for time, measured before: eager (3,071 samples/s, 12,005 pairs/s on the H100) and model+nodrop+atenln
# (attention dropout 0, not the paper's model: +5% on the H200).
# (bf16 scoring, `trunk+score`, measured 14,945-15,073 pairs/s on the H100 and 15,700-16,400 on the H200;
# bench_eval below times the bf16 product path again.)
# (2026-11-27 on the H100, all slower than the product setting: attention as matmuls + softmax (`math`), a bf16
# residual stream (`ln16`), float8 with row-wise input scales (`fp8dyn`); `sdpa-*` only take effect eager.)
step train && run train "${TRAIN_TIMEOUT:-280}" $PY benchmarks/bench_train.py --preset base --device cuda --skip-baseline --steps 10 \
    --warmup 3 --profile 12 --variants ${TRAIN_VARIANTS:-model+atenln model+atenln+allrows model+atenln+fusedln trunk+fp8 trunk+fp8+allrows trunk+fp8+res16} \
    --json "$OUT/train.json"
# Steps `profile` and `nomask` (not defaults; benchmarks/gpu_probe.sh runs them with coco): where an eager BERT-base
# training step spends its GPU time (the profiler's table), and the compiled step without the attention mask (flash
# attention's upper bound)
step profile && run probe_profile "${PROFILE_TIMEOUT:-50}" $PY benchmarks/bench_train.py --preset base --device cuda \
    --skip-baseline --steps 5 --warmup 2 --profile 30
step nomask && run probe_nomask "${NOMASK_TIMEOUT:-110}" $PY benchmarks/bench_train.py --preset base --device cuda --compile \
    --no-mask --skip-baseline --steps 10 --warmup 3
step autotune && run autotune "${AUTOTUNE_TIMEOUT:-240}" $PY benchmarks/bench_train.py --preset base --device cuda --skip-baseline \
    --steps 10 --warmup 3 --variants trunk+fp8 trunk+fp8+autotune --json "$OUT/autotune.json"
# eval on web-like caption lengths, BERT-base, 600 x 300: captions shortest first vs as given, `lait eval --compile`
# (fixed shapes), `--precision fp8`, then trimmed shapes (over 60 s of compiling on the H100). Each writes the JSON.
step eval && run eval_order "${EVAL_TIMEOUT:-120}" $PY benchmarks/bench_eval.py --device cuda --preset base --images 300 \
    --batch-size 256 --compile --fp8 --json "$OUT/eval_order.json"
# features: the product defaults on CUDA (folded batch norms; batched RPN NMS for vg only: 300 vectorised steps,
# 94 ms of a 700 ms batch on the H100) against the same with the RPN's NMS as one Triton kernel (rpn-kernel: one
# program per image, same boxes) and with its steps compiled (rpn-compiled); end to end (with the fastest) with
# JPEGs decoded on the device (the CUDA default, now one batch ahead) and in the workers
common=(--device cuda --batch-size 64 --num-workers 14 --repeats 2)
step vg && run features_vg "${VG_TIMEOUT:-150}" $PY benchmarks/bench_features.py "${common[@]}" --detectors vg-r101-c4 \
    --images "${VG_IMAGES:-512}" --variants default rpn-kernel rpn-compiled --decode device workers --profile 15 \
    --json "$OUT/features_vg.json"
step coco && run features_coco "${COCO_TIMEOUT:-60}" $PY benchmarks/bench_features.py "${common[@]}" --detectors coco-r50-fpn \
    --images "${COCO_IMAGES:-256}" --variants default rpn-kernel --decode device workers --json "$OUT/features_coco.json"
# web-like aspect ratios: batching by padded shape (exact per image) against the old mixed, padded batches, over
# 1,024 images (at batch 64 the wait is 2,048 arrivals: a short run leaves every shape's last batch partial)
step mix && run features_mix "${MIX_TIMEOUT:-120}" $PY benchmarks/bench_features.py "${common[@]}" --detectors vg-r101-c4 \
    --images "${MIX_IMAGES:-1024}" --aspect-mix --width 1000 --decode device --json "$OUT/features_mix.json"
# lait features' DataLoader workers taking every n-th piece (the default: every worker reads every row group) against
# blocks of pieces (--read-window 4096: each 1,024-row group read by 4-6 of the 14 workers, more results held);
# end to end, 1,024 images in 1,024-row groups; not in the default steps
step window && for window in 0 4096; do run "features_window$window" "${WINDOW_TIMEOUT:-75}" $PY benchmarks/bench_features.py \
    "${common[@]}" --repeats 1 --detectors vg-r101-c4 --images 1024 --row-group-size 1024 --decode device \
    --read-window "$window" --json "$OUT/features_window$window.json"; done
# box selection for a batch of 64 at once against image by image: time and host reads (syncs) per batch
step selection && run selection "${SELECTION_TIMEOUT:-40}" $PY benchmarks/bench_selection.py --device cuda --images 64 \
    --json "$OUT/selection.json"
# length buckets against random batches on the real training path (BERT-base, eager bf16; compiled, each of the
# eight bucket shapes would compile first); not in the default steps, add it when time allows
# (8 loader workers: one process decoding regions would starve the GPU; two runs each, alternating, so the
# first run's CUDA start-up does not count against the baseline)
step buckets && run buckets "${BUCKETS_TIMEOUT:-200}" $PY benchmarks/bench_buckets.py --preset base --device cuda \
    --batch-size 256 --steps 30 --images 3000 --workers 8 --repeats 2 --json "$OUT/buckets.json"
dry || nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv | tee -a "$OUT/env.txt"
