"""FP8 matrix multiplies for scoring: the encoder's linear layers in float8 (e4m3), row-wise scaled.

Scoring every (caption, image) pair of a test set is one forward pass per pair and nothing else, and
at BERT-base size most of its time goes into the encoder's four matrix multiplies per layer (QKV,
attention output, feed-forward in and out). Hopper GPUs run float8 products at twice the bf16 rate.
``Float8Linear`` keeps a layer's weight in e4m3 with one scale per output feature, computed once;
each call scales every input row by its own absolute maximum (dynamic, per token) and calls
``torch._scaled_mm``, which multiplies in float8, applies both scales and the bias, and returns bf16.
Under ``torch.compile`` the row scaling fuses into the op that produced the row.

Float8 carries a 3-bit mantissa: a product is off by a few percent, the matching logits by more than
bf16's. Ranking quality is what matters for retrieval; ``tests/model/test_model_fp8.py`` checks that a
trained model's recall holds, and ``benchmarks/bench_train.py`` (modifier ``fp8``) times it. It is an
opt-in of ``lait eval --precision fp8``, never used for training. The CPU runs the same op (slowly), so tests
need no GPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
#: ``torch._scaled_mm`` needs both matrix sides in multiples of 16 on CUDA.
ALIGN = 16


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
    """Inference-only stand-in for an ``nn.Linear``: e4m3 weight and row-scaled e4m3 inputs, bf16 out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.in_features % ALIGN or linear.out_features % ALIGN:
            raise ValueError(f"Float8Linear needs features in multiples of {ALIGN}, "
                             f"got {linear.in_features} -> {linear.out_features}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            weight, scale = _row_scaled(linear.weight.detach())  # one scale per output feature
        # _scaled_mm wants the second operand column-major: the transpose of a row-major [N, K] is.
        self.register_buffer("weight_t", weight.t(), persistent=False)
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, N]
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        quantized, scale = _row_scaled(x.reshape(-1, shape[-1]))
        # Fast accumulation on the GPU, as float8 inference usually runs (torchao's default for forward passes).
        y = torch._scaled_mm(quantized, self.weight_t, scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                             out_dtype=torch.bfloat16, use_fast_accum=quantized.is_cuda)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-scaled"


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


@contextlib.contextmanager
def float8_encoder(model: nn.Module) -> Iterator[int]:
    """The encoder's linear layers as ``Float8Linear`` inside the block, the originals again after.

    Yields how many layers were swapped. Compile the model inside the block, after the swap, and drop
    that graph on leaving (``model.eval._score`` does both).
    """
    swapped = []
    try:
        with torch.no_grad():
            for parent, name in encoder_linears(model):
                original = getattr(parent, name)
                setattr(parent, name, Float8Linear(original).to(original.weight.device))
                swapped.append((parent, name, original))
        yield len(swapped)
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
