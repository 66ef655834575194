"""FP8 matrix multiplies for scoring: the encoder's linear layers in float8 (e4m3).

Scoring every (caption, image) pair of a test set is one forward pass per pair and nothing else, and
at BERT-base size most of its time goes into the encoder's four matrix multiplies per layer (QKV,
attention output, feed-forward in and out). Hopper GPUs run float8 products at twice the bf16 rate.
``Float8Linear`` keeps a layer's weight in e4m3 with one scale per output feature, computed once,
and calls ``torch._scaled_mm``, which multiplies in float8, applies both scales and the bias, and
returns bf16. Its inputs are scaled one of two ways:

- static (what ``lait eval --precision fp8`` uses): one scale per layer, fixed before scoring by
  ``calibrate`` from the largest input that layer saw on a sample of pairs, with head-room
  (``CALIBRATION_MARGIN``); values beyond it saturate at e4m3's largest. Quantising is then a multiply,
  a clamp and a cast, which ``torch.compile`` fuses into the op that produced the input (GELU,
  LayerNorm, the attention's transpose) at no extra pass over the data.
- dynamic: every input row scaled by its own absolute maximum. That needs a reduction along the row
  before the cast; for the feed-forward's 3,072-wide GELU output it cost more than float8 saved
  (an H100 scored 14,742 pairs/s this way against 15,073 in bf16, ``benchmarks/RESULTS_train.md``).

e4m3 is a floating-point format (about 15 binades of normal numbers), so one scale per tensor keeps
small values at the same relative precision as large ones; the scale only has to keep the largest
below 448.

Float8 carries a 3-bit mantissa: a product is off by a few percent, the matching logits by more than
bf16's. Ranking quality is what matters for retrieval; ``tests/model/test_model_fp8.py`` checks that a
trained model's recall holds, and ``benchmarks/bench_train.py`` (modifier ``fp8``) times it. It is an
opt-in of ``lait eval --precision fp8``, never used for training. The CPU runs the same op (slowly), so tests
need no GPU.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
#: ``torch._scaled_mm`` needs both matrix sides in multiples of 16 on CUDA.
ALIGN = 16
#: Static input scales leave this factor of head-room above the largest input seen while calibrating
#: (one binade: inputs up to twice that size still fit before saturating).
CALIBRATION_MARGIN = 2.0


def fp8_supported(device: torch.device | str) -> bool:
    """Whether ``torch._scaled_mm`` runs float8 here: CUDA compute capability 8.9+ (Ada, Hopper), or the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return False


def _row_scaled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [M, K] as e4m3 with one float32 scale per row, [M, 1] (x ~ q * scale)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    quantized = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return quantized, scale


class Float8Linear(nn.Module):
    """Inference-only stand-in for an ``nn.Linear``: e4m3 weight and e4m3 inputs, bf16 out.

    ``input_amax`` None scales each input row by its own maximum (dynamic); a number fixes one input
    scale, ``input_amax / 448``, and inputs beyond it saturate (static).
    """

    def __init__(self, linear: nn.Linear, input_amax: float | None = None):
        super().__init__()
        if linear.in_features % ALIGN or linear.out_features % ALIGN:
            raise ValueError(f"Float8Linear needs features in multiples of {ALIGN}, "
                             f"got {linear.in_features} -> {linear.out_features}")
        if input_amax is not None and not input_amax > 0:
            raise ValueError(f"input_amax must be positive, got {input_amax}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        device = linear.weight.device
        with torch.no_grad():
            weight, scale = _row_scaled(linear.weight.detach())  # one scale per output feature
        # _scaled_mm wants the second operand column-major: the transpose of a row-major [N, K] is.
        self.register_buffer("weight_t", weight.t(), persistent=False)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, N]
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.static = input_amax is not None
        input_scale = torch.tensor([[input_amax / E4M3_MAX if self.static else 1.0]], device=device)
        self.register_buffer("input_scale", input_scale, persistent=False)  # [1, 1]
        self.register_buffer("input_inverse", 1.0 / input_scale, persistent=False)

    def forward(self, x: torch.Tensor, columns: slice | None = None) -> torch.Tensor:
        """``x @ W.T + b``; ``columns`` computes only those output features (a slice of multiples of 16)."""
        weight, weight_scale, bias = self.weight_t, self.weight_scale, self.bias
        if columns is not None:
            weight, weight_scale = weight[:, columns], weight_scale[:, columns]
            bias = None if bias is None else bias[columns]
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.static:
            quantized = (rows.float() * self.input_inverse).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
            scale = self.input_scale.expand(rows.shape[0], 1).contiguous()  # row-wise form: one value repeated
        else:
            quantized, scale = _row_scaled(rows)
        # Fast accumulation on the GPU, as float8 inference usually runs (torchao's default for forward passes).
        y = torch._scaled_mm(quantized, weight, scale_a=scale, scale_b=weight_scale.contiguous(), bias=bias,
                             out_dtype=torch.bfloat16, use_fast_accum=quantized.is_cuda)
        return y.view(*shape[:-1], weight.shape[1])

    def extra_repr(self) -> str:
        inputs = f"static input scale {float(self.input_scale):.4g}" if self.static else "row-scaled inputs"
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3, {inputs}"


def encoder_linears(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear layer inside ``model.layers`` that float8 can take."""
    found = []
    for layer in model.layers:
        for parent in layer.modules():
            for name, child in parent.named_children():
                if (isinstance(child, nn.Linear) and not child.in_features % ALIGN
                        and not child.out_features % ALIGN):
                    found.append((parent, name))
    return found


@torch.no_grad()
def calibrate(model: nn.Module, run: Callable[[], object]) -> list[float]:
    """The largest absolute input each of ``encoder_linears(model)`` sees while ``run()`` runs the model
    (a few scoring batches), in that order: what ``float8_encoder``'s static scales are made from."""
    places = encoder_linears(model)
    seen = [torch.zeros((), device=getattr(parent, name).weight.device) for parent, name in places]

    def hook(index: int):
        def record(module: nn.Module, args: tuple) -> None:
            seen[index] = torch.maximum(seen[index], args[0].detach().abs().amax().float())
        return record

    handles = [getattr(parent, name).register_forward_pre_hook(hook(i)) for i, (parent, name) in enumerate(places)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [float(value) for value in seen]


@contextlib.contextmanager
def float8_encoder(model: nn.Module, input_amax: Sequence[float] | None = None,
                   margin: float = CALIBRATION_MARGIN) -> Iterator[int]:
    """The encoder's linear layers as ``Float8Linear`` inside the block, the originals again after.

    ``input_amax`` (from ``calibrate``, one per layer) gives static input scales with ``margin`` of
    head-room; None scales inputs row by row. Yields how many layers were swapped. Compile the model inside
    the block, after the swap, and drop that graph on leaving (``model.eval._score`` does both).
    """
    places = encoder_linears(model)
    if input_amax is not None and len(input_amax) != len(places):
        raise ValueError(f"{len(input_amax)} calibrated input maxima for {len(places)} encoder linear layers")
    swapped = []
    try:
        with torch.no_grad():
            for index, (parent, name) in enumerate(places):
                original = getattr(parent, name)
                # a layer that saw only zeros while calibrating keeps a tiny positive scale
                amax = None if input_amax is None else max(float(input_amax[index]) * margin, 1e-6)
                setattr(parent, name, Float8Linear(original, amax))
                swapped.append((parent, name, original))
        yield len(swapped)
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
