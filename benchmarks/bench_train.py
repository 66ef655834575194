"""Benchmark: ImageBERT training samples/s, model FLOPs utilisation, and eval scoring pairs/s.

Baseline, run in the same process on the same inputs: Hugging Face ``BertModel`` (sdpa attention,
fed ``inputs_embeds`` built by the same region/text embedding) as the trunk, with the same heads.
Prints the figures and the ratio ImageBERT / baseline::

    python benchmarks/bench_train.py --preset base --device cuda --compile      # the issue's setting, on a GPU
    # ImageBERT variants against each other (no baseline), each with its top GPU kernels; the product's
    # training setting (configs/imagebert-base.yaml) is model+atenln:
    python benchmarks/bench_train.py --preset base --device cuda --skip-baseline --profile 12 \
        --variants eager model+atenln trunk trunk+bf16weights trunk+fp8
    python benchmarks/bench_train.py --preset small --device cpu --threads 1    # what a CPU can run
    python benchmarks/bench_train.py --preset small --skip-baseline --loader-workers 0   # + data loader samples/s

Presets: ``base`` = BERT-base, 40 text tokens + 100 regions of 2048-d, 1601 classes, batch 512, bf16 on GPU.
FLOPs per sample are counted from the matmuls (6 x multiply-adds for a training step: forward + backward);
MFU divides the achieved rate by ``--peak-tflops`` (default: 989 for an H100's dense bf16, unknown on CPU).
The count is the whole sequence through every layer, as the issue's reference encoder computes it; since the
last layer computes only the rows read (modifier ``allrows`` turns that off), TFLOP/s and MFU are rates of that
fixed workload, comparable across versions, not of the products actually run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_io import write_json  # noqa: E402  (this folder: the script's own)

from model.config import ModelConfig  # noqa: E402
from model.fp8 import calibrate, float8_encoder  # noqa: E402
from model.imagebert import ImageBert, SelfAttention, num_parameters  # noqa: E402
from model.layer_norm import OpaqueLayerNorm, make_layer_norms_opaque  # noqa: E402
from model.tasks import choose_exact, exact_slots, slot_positions  # noqa: E402

PRESETS = {
    "base": dict(model=dict(), text=40, regions=100, feature_dim=2048, num_classes=1601, batch=512, eval_batch=1024),
    "small": dict(model=dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024), text=40, regions=100,
                  feature_dim=2048, num_classes=1601, batch=16, eval_batch=64),
    "tiny": dict(model=dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), text=24, regions=30,
                 feature_dim=256, num_classes=25, batch=32, eval_batch=256),
}
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0}


def make_batch(config: ModelConfig, size: int, text: int, regions: int, device: torch.device,
               exact: bool = False) -> dict:
    """A full batch with MLM labels and masked regions, as the trainer hands the model.

    ``exact``: masking with a fixed count per row plus the slot positions (what ``masking: exact`` gives
    the heads, so the whole model compiles with static shapes).
    """
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, config.vocab_size, (size, text), generator=g),
        "text_mask": torch.ones(size, text, dtype=torch.bool),
        "region_features": torch.randn(size, regions, config.feature_dim, generator=g).half(),  # as the loader
        "region_locations": torch.rand(size, regions, 5, generator=g),
        "region_mask": torch.ones(size, regions, dtype=torch.bool),
        "region_classes": torch.randint(0, config.num_classes, (size, regions), generator=g),
        "itm_labels": torch.rand(size, generator=g) < 0.5,
    }
    batch["mlm_labels"] = torch.where(torch.rand(size, text, generator=g) < 0.15, batch["input_ids"], -100)
    batch["region_masked"] = torch.rand(size, regions, generator=g) < 0.15
    batch["region_loss_mask"] = torch.ones(size, regions, dtype=torch.bool)
    batch["region_targets"] = batch["region_features"].clone()
    if exact:
        everything = torch.ones(size, text, dtype=torch.bool)
        chosen = choose_exact(everything, torch.rand(size, text, generator=g), 0.15)
        batch["mlm_labels"] = torch.where(chosen, batch["input_ids"], -100)
        batch["mlm_positions"] = slot_positions(chosen, exact_slots(text, 0.15))
        batch["region_masked"] = choose_exact(batch["region_mask"], torch.rand(size, regions, generator=g), 0.15)
        batch["region_positions"] = slot_positions(batch["region_masked"], exact_slots(regions, 0.15))
    return {k: v.to(device) for k, v in batch.items()}


class HFTrunkBaseline(nn.Module):
    """The baseline: ImageBERT's embeddings and heads around Hugging Face's BertModel encoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.inner = ImageBert(config)
        hf = BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                        intermediate_size=config.intermediate_size, hidden_dropout_prob=config.dropout,
                        attention_probs_dropout_prob=config.attention_dropout, attn_implementation="sdpa")
        self.bert = BertModel(hf, add_pooling_layer=True)
        self.inner.layers = nn.ModuleList()  # the HF encoder replaces ImageBERT's layers

    def forward(self, batch: dict, weights: dict | None = None):
        embeddings = self.inner.embeddings(batch["input_ids"], batch["region_features"], batch["region_locations"])
        mask = torch.cat([batch["text_mask"], batch["region_mask"]], 1).long()
        # HF adds its own position and segment embeddings to inputs_embeds: unavoidable in this baseline.
        out = self.bert(inputs_embeds=embeddings, attention_mask=mask)
        sequence, pooled = out.last_hidden_state, out.pooler_output
        heads = self.inner.heads
        outputs = {"scores": heads["itm"].logits(pooled)}
        if not weights:
            return outputs, None
        loss = sum(w * heads[name].loss(sequence, pooled, batch) for name, w in weights.items())
        return outputs, loss


def matmul_flops_per_sample(config: ModelConfig, text: int, regions: int, masked_text: float, masked_regions: float) -> float:
    """Forward multiply-adds x 2 of one sample (encoder, embeddings projection, heads on masked items)."""
    length, hidden, inter = text + regions, config.hidden_size, config.intermediate_size
    per_layer = length * (4 * hidden * hidden + 2 * hidden * inter) + 2 * length * length * hidden
    encoder = config.num_layers * per_layer
    embed = regions * (config.feature_dim + 5) * hidden
    heads = (masked_text * text * (hidden * hidden + hidden * config.vocab_size)
             + masked_regions * regions * (2 * hidden * hidden + hidden * (config.num_classes + config.feature_dim)))
    return 2.0 * (encoder + embed + heads)


def time_train(model: nn.Module, batch: dict, steps: int, warmup: int, bf16: bool, device: torch.device) -> float:
    """Seconds per training step (forward, backward, AdamW) after warm-up."""
    weights = {"mlm": 1.0, "moc": 1.0, "mrfr": 1.0, "itm": 1.0}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    model.train()

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(batch, weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def time_score(model: nn.Module, batch: dict, steps: int, warmup: int, bf16: bool, device: torch.device) -> float:
    """Seconds per scoring forward pass (eval mode)."""
    model.eval()
    for _ in range(warmup):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            model(batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            model(batch)
    _sync(device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loader(config: ModelConfig, batch_size: int, images: int, batches: int, workers: int) -> float:
    """Training batches/s of the real data path (Parquet row groups -> examples -> collated batch) on synthetic data."""
    import tempfile

    from model.config import DatasetConfig
    from model.data import make_loader
    from model.synthetic import write_synthetic
    from model.tokenizer import train_wordpiece

    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(folder, images=images, feature_dim=config.feature_dim, background=config.max_regions - 2,
                        test_images=0)
        tokenizer_json = train_wordpiece(["a small red circle left of a large blue square"] * 10, 100).to_str()
        loader = make_loader([DatasetConfig(f"{folder}/regions", f"{folder}/captions", "train")], tokenizer_json,
                             config, batch_size, num_workers=workers, shuffle_buffer=256)
        stream = iter(loader)
        next(stream)  # fills the shuffle buffer and starts the workers
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        seconds = time.perf_counter() - start
        del stream
    return batches / seconds


VARIANT_HELP = """ImageBERT variants to time, each a '+'-joined spec: a scope, eager | trunk (embeddings + encoder
compiled) | model (the whole forward and losses compiled; exact masking), then modifiers: nodrop (attention
dropout 0), additive (key mask as an additive bias), nomask (no key mask: an upper bound, valid only without
padding), sdpa-cudnn | sdpa-efficient | sdpa-flash | sdpa-math (allow only that attention kernel; eager only: on an
H100 with torch 2.11 a compiled graph kept cuDNN's kernel under sdpa-math), math (attention written out as matmuls
and a softmax, which the compiler fuses: no tile padding of the 140-long sequence; slower on an H100), eval4096 (eval batch 4,096),
atenln (LayerNorm as an opaque op: ATen's kernels inside the compiled graph), nopersist (inductor without
persistent reductions), bf16weights (scoring only, with the weights cast to bf16 before compiling), ln16 (with
atenln: LayerNorm outputs keep the input's dtype, so the residual stream stays bf16), fp8 (scoring only, with
the encoder's matrix multiplies in float8 as `lait eval --precision fp8` runs them: static input scales calibrated
on the scoring batch; Ada/Hopper GPUs), fp8dyn (the same with each input row scaled on its own), score (time
scoring only), res16 (scoring: LayerNorm outputs in bf16, so the residual stream between layers is bf16), fusedln
(each dropout + residual + LayerNorm of the encoder as one Triton kernel each way, training config fused_norm),
autotune (compile with mode max-autotune-no-cudagraphs: inductor's Triton matmul templates, float8 included, tried
against cuBLAS, with the following elementwise work such as GELU and float8 quantising fused into their epilogues;
minutes of compiling), allrows (the last layer computes every row, as before the night of 2026-11-27; by default it computes
only the rows read: [CLS] to score, [CLS] and the masked slots to train with exact masking), exact (exact
masking for scope eager or trunk too, as `lait train` with masking: exact runs them; scope model always has it)."""
MODIFIERS = {"nodrop", "additive", "nomask", "sdpa-cudnn", "sdpa-efficient", "sdpa-flash", "sdpa-math", "math",
             "eval4096", "atenln", "nopersist", "bf16weights", "ln16", "fp8", "fp8dyn", "score", "res16", "fusedln",
             "autotune", "allrows", "exact"}


def parse_variant(name: str) -> dict:
    """``trunk+nodrop`` -> {"scope": "trunk", "nodrop": True}; a clear error for unknown parts."""
    scope, *mods = name.split("+")
    if scope not in ("eager", "trunk", "model"):
        raise SystemExit(f"variant {name!r}: the scope must be eager, trunk or model, not {scope!r}")
    unknown = set(mods) - MODIFIERS
    if unknown:
        raise SystemExit(f"variant {name!r}: unknown modifier(s) {sorted(unknown)}; expected some of {sorted(MODIFIERS)}")
    return {"scope": scope, **{m: True for m in mods}}


def _attention_as_math(self, x: torch.Tensor, keep: torch.Tensor | None,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
    """``SelfAttention.forward`` with attention as two batched matmuls around a softmax (modifier ``math``)."""
    batch, length, hidden = x.shape
    q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, hidden // self.num_heads).permute(2, 0, 3, 1, 4)
    if rows is not None:  # the last layer's queries: only the rows read (the product computes only their Q)
        q = q.gather(2, rows[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3]))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    if self.training and self.dropout:
        probs = torch.nn.functional.dropout(probs, self.dropout)
    return self.out(torch.matmul(probs, v).transpose(1, 2).reshape(batch, q.shape[2], hidden))


def _output_in_autocast_dtype(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of modifier ``res16``: autocast runs LayerNorm in float32; hand its output on in bf16."""
    if torch.is_autocast_enabled(output.device.type):
        return output.to(torch.get_autocast_dtype(output.device.type))
    return output


def _layers(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
    """The encoder's layers, the last on ``rows`` only (as ``ImageBert._trunk_eager``)."""
    last = len(self.layers) - 1
    for index, layer in enumerate(self.layers):
        x = layer(x, mask, rows if index == last else None)
    return x


def _trunk_without_mask(self, input_ids, text_mask, region_features, region_locations, region_mask, rows=None):
    x = _layers(self, self.embeddings(input_ids, region_features, region_locations), None, rows)
    return x, torch.tanh(self.pooler(x[:, 0]))


def _trunk_with_additive_mask(self, input_ids, text_mask, region_features, region_locations, region_mask, rows=None):
    """ImageBERT's trunk with the key mask as an additive bias (0 / most negative) in the compute dtype."""
    x = self.embeddings(input_ids, region_features, region_locations)
    keep = torch.cat([text_mask, region_mask], dim=1)[:, None, None, :]
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    bias = torch.zeros(keep.shape, dtype=dtype, device=x.device).masked_fill(~keep, torch.finfo(dtype).min)
    x = _layers(self, x, bias, rows)
    return x, torch.tanh(self.pooler(x[:, 0]))


def _sdpa_context(spec: dict):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
             "sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-math": SDPBackend.MATH}
    chosen = [backend for key, backend in kinds.items() if spec.get(key)]
    return sdpa_kernel(chosen) if chosen else contextlib.nullcontext()


def run_variant(spec: dict, config: ModelConfig, train_batch: dict, score_batch: dict, args, bf16: bool,
                device: torch.device, flops: float, peak: float | None, batch_size: int, eval_batch: int) -> dict:
    """Build, (compile,) time training and scoring of one variant; the figures as a row."""
    import contextlib
    import copy
    import types

    config = copy.deepcopy(config)
    # A variant's model must not reuse the graphs compiled for the one before: dynamo does not guard on module
    # hooks by default, so an identically shaped model with hooks (res16) would run the previous variant's graph.
    torch._dynamo.reset()
    swaps = contextlib.ExitStack()  # float8 layers live as long as the variant's model
    if spec.get("nodrop"):
        config.attention_dropout = 0.0
    torch.manual_seed(0)
    if spec["scope"] in ("hf", "hf-trunk"):
        model = HFTrunkBaseline(config).to(device)
        if spec["scope"] == "hf-trunk":
            model.bert = torch.compile(model.bert, dynamic=False)
    else:
        model = ImageBert(config).to(device)
        if spec.get("additive"):
            model._trunk_eager = types.MethodType(_trunk_with_additive_mask, model)
        opaque = bool(spec.get("atenln"))  # what `lait train` with compile uses; its scoring keeps inductor's
        if spec.get("math"):
            for module in model.modules():
                if isinstance(module, SelfAttention):
                    module.forward = types.MethodType(_attention_as_math, module)
        if spec.get("res16"):  # LayerNorm outputs cast to the autocast dtype: a bf16 residual stream for scoring
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.register_forward_hook(_output_in_autocast_dtype)
        if spec.get("nomask"):  # an upper bound, not a product mode: no key-padding mask at all
            model._trunk_eager = types.MethodType(_trunk_without_mask, model)
        if spec.get("bf16weights"):  # scoring without autocast's weight casts; cast before compiling
            model.to(torch.bfloat16)
            model.heads["itm"].float()  # the matching logit stays fp32, as under autocast
        if spec.get("fp8") or spec.get("fp8dyn"):  # swapped before compiling, so the graph holds the float8 layers
            amax = None
            if spec.get("fp8"):  # static scales, calibrated eagerly on the batch as `lait eval` does on a sample
                amax = calibrate(model, lambda m=model: time_score(m, score_batch, 1, 0, bf16, device))
            swaps.enter_context(float8_encoder(model, amax))
        if spec.get("fusedln"):  # traced into the graph: set before compiling
            model.fused_norm = True
        if spec.get("allrows"):
            model.last_layer_rows = False
        options = {"dynamic": False}
        if spec.get("autotune"):  # inductor's Triton matmul templates, benchmarked against cuBLAS, with fused epilogues
            options["mode"] = "max-autotune-no-cudagraphs"
        if spec["scope"] == "trunk":
            model.compile_trunk(opaque_layer_norm=opaque, **options)
        elif spec["scope"] == "model":
            model.compile_model(opaque_layer_norm=opaque, **options)
        elif opaque:
            make_layer_norms_opaque(model)
        if spec.get("ln16"):
            if not opaque:
                raise SystemExit("variant modifier ln16 needs atenln")
            for module in model.modules():
                if isinstance(module, OpaqueLayerNorm):
                    module.keep_dtype = True
    if spec.get("eval4096"):
        score_batch = {k: v.repeat(4, *([1] * (v.dim() - 1))) for k, v in score_batch.items()}
        eval_batch = score_batch["input_ids"].shape[0]
    inductor = contextlib.nullcontext()
    if spec.get("nopersist"):
        from torch._inductor import config as inductor_config

        inductor = inductor_config.patch({"triton.persistent_reductions": False})
    scoring_only = bool(spec.get("bf16weights") or spec.get("fp8") or spec.get("fp8dyn") or spec.get("score"))
    with swaps, _sdpa_context(spec), inductor:
        step_s = None if scoring_only else time_train(model, train_batch, args.steps, args.warmup, bf16, device)
        score_s = time_score(model, score_batch, args.steps, args.warmup, bf16, device)
        if args.profile and spec["scope"] not in ("hf", "hf-trunk"):
            _print_profile(model, score_batch if scoring_only else train_batch, args.profile, bf16, device,
                           train=not scoring_only)
    row = {"params_m": round(num_parameters(model) / 1e6, 1), "train_samples_per_s": None, "train_ms_per_step": None,
           "train_tflops": None, "mfu": None, "eval_pairs_per_s": round(eval_batch / score_s, 1),
           "eval_batch_size": eval_batch}
    if step_s is not None:
        samples = batch_size / step_s
        tflops = samples * flops / 1e12
        row.update({"train_samples_per_s": round(samples, 1), "train_ms_per_step": round(step_s * 1e3, 2),
                    "train_tflops": round(tflops, 2), "mfu": round(tflops / peak, 3) if peak else None})
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _print_profile(model: nn.Module, batch: dict, top: int, bf16: bool, device: torch.device,
                   train: bool = True) -> None:
    """The ``top`` kernels (GPU) or ops (CPU) of two training steps (or scoring passes), by own time, in ms per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        (time_train if train else time_score)(model, batch, 2, 0, bf16, device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr, 0) for e in events if e.device_type.name == ("CUDA" if device.type == "cuda" else "CPU"))
    rows = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:top]
    print(f"  profile: {total / 2e3:.1f} ms of {'GPU' if device.type == 'cuda' else 'CPU'} time per step (own time, top {top})")
    for e in rows:
        print(f"  {getattr(e, attr, 0) / 2e3:8.2f} ms  {e.count // 2:>5}x  {e.key[:90]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, help="training batch (default: the preset's)")
    parser.add_argument("--eval-batch-size", type=int, help="pairs per scoring pass (default: the preset's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (ImageBERT: variant trunk)")
    parser.add_argument("--variants", nargs="+", help=VARIANT_HELP)
    parser.add_argument("--eager-too", action="store_true", help="with --compile, also time ImageBERT eager")
    parser.add_argument("--eager-baseline", action="store_true", help="with --compile, leave the baseline eager")
    parser.add_argument("--profile", type=int, default=0,
                        help="print the top N kernels of two profiled training steps of each ImageBERT variant")
    parser.add_argument("--no-mask", action="store_true",
                        help="drop the attention mask (flash attention; valid only for batches without padding)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on GPU")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' dense bf16)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--loader-workers", type=int, default=-1,
                        help="also time the training data loader with this many workers (default: skip)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    bf16 = device.type == "cuda" and not args.fp32
    preset = PRESETS[args.preset]
    config = ModelConfig(feature_dim=preset["feature_dim"], num_classes=preset["num_classes"],
                         max_regions=preset["regions"], max_text_len=preset["text"], **preset["model"])
    batch_size = args.batch_size or preset["batch"]
    eval_batch = args.eval_batch_size or preset["eval_batch"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if name.startswith(k)), None)
    print(f"device: {name}   preset: {args.preset}   batch {batch_size}   text {preset['text']} + regions "
          f"{preset['regions']}   {'bf16' if bf16 else 'fp32'}   compile={args.compile}")
    flops = 3 * matmul_flops_per_sample(config, preset["text"], preset["regions"], 0.15, 0.15)  # fwd + 2x bwd
    score_batch = {k: v for k, v in make_batch(config, eval_batch, preset["text"], preset["regions"], device).items()
                   if k in ("input_ids", "text_mask", "region_features", "region_locations", "region_mask")}
    results = {"device": name, "preset": args.preset, "batch_size": batch_size, "eval_batch_size": eval_batch,
               "bf16": bf16, "compile": args.compile, "flops_per_sample": flops}
    variants = args.variants or ((["eager"] if args.eager_too else []) + (["trunk"] if args.compile else ["eager"]))
    if args.no_mask:
        variants = [v + "+nomask" for v in variants]
    # A variant listed again (to see the run-to-run spread) is labelled NAME#2, NAME#3, ... in the output.
    contenders = [(name if variants[:i].count(name) == 0 else f"{name}#{variants[:i].count(name) + 1}",
                   parse_variant(name)) for i, name in enumerate(variants)]
    if not args.skip_baseline:
        contenders.append(("hf_bert_trunk", dict(scope="hf-trunk" if args.compile and not args.eager_baseline else "hf")))
    batches = {}
    for label, spec in contenders:
        exact = spec["scope"] == "model" or bool(spec.get("exact"))
        if exact not in batches:
            batches[exact] = make_batch(config, batch_size, preset["text"], preset["regions"], device, exact=exact)
        began = time.perf_counter()
        if args.profile:  # the profile prints while the variant runs, before its figures: name it first
            print(f"-- {label}")
        try:
            row = run_variant(spec, config, batches[exact], score_batch, args, bf16, device, flops, peak, batch_size, eval_batch)
        except Exception as error:  # one failing variant (a compile error, no kernel) must not lose the others
            print(f"{label}: FAILED {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            results[label] = {"error": f"{type(error).__name__}: {error}"[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_json(args.json, results)
            continue
        row["wall_s_with_compile"] = round(time.perf_counter() - began, 1)
        results[label] = row
        write_json(args.json, results)  # after every variant: a run cut short keeps what it measured
        train = (f"train {row['train_samples_per_s']:>9,.1f} samples/s  {row['train_tflops']:>8.2f} TFLOP/s  "
                 f"MFU {row['mfu'] if row['mfu'] is not None else 'n/a'}" if row["train_samples_per_s"] else "train (not timed)")
        print(f"{label:<22} {row['params_m']:>7.1f}M params  {train}  eval {row['eval_pairs_per_s']:>10,.1f} pairs/s"
              + f"  [{row['wall_s_with_compile']:.0f} s]", flush=True)
    ours = next((label for label, spec in reversed(contenders) if spec["scope"] not in ("hf", "hf-trunk")
                 and results[label].get("train_samples_per_s")), None)
    if "imagebert" not in results and ours is not None:
        results["imagebert"] = results[ours]  # the last ImageBERT variant is the one compared with the baseline
    if "hf_bert_trunk" in results and "error" not in results["hf_bert_trunk"] and "imagebert" in results:
        ours, base = results["imagebert"], results["hf_bert_trunk"]
        results["ratio_train"] = round(ours["train_samples_per_s"] / base["train_samples_per_s"], 3)
        results["ratio_eval"] = round(ours["eval_pairs_per_s"] / base["eval_pairs_per_s"], 3)
        print(f"ratio imagebert / hf_bert_trunk: train {results['ratio_train']:.2f}x   eval {results['ratio_eval']:.2f}x")
    if args.loader_workers >= 0:
        rate = time_loader(config, batch_size, images=max(4 * batch_size, 256), batches=10, workers=args.loader_workers)
        results["loader_samples_per_s"] = round(rate * batch_size, 1)
        print(f"data loader ({args.loader_workers} workers, up to {preset['regions']} regions x {preset['feature_dim']}-d):"
              f" {rate * batch_size:,.1f} samples/s")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
