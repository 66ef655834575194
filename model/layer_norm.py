"""LayerNorm as one opaque operator, so ``torch.compile`` calls ATen's kernels instead of generating its own.

Inductor decomposes ``layer_norm`` and fuses its backward with the neighbouring dropout, residual add
and dtype casts. For ImageBERT-base on an H200 (torch 2.11, batch 512 x 140 tokens) that fused backward
kernel took about 1.5 ms per LayerNorm, 34 ms of a 145 ms training step, where ATen's own backward
kernels took about 7 ms for all of them (``benchmarks/RESULTS_train.md``). Wrapping the operator in a
``torch.library`` custom op keeps it whole: the compiler fuses around it, not through it.

``OpaqueLayerNorm`` is an ``nn.LayerNorm`` (same parameters, same state dict) whose forward goes through
the custom op, computing in float32 as autocast runs LayerNorm; ``make_layer_norms_opaque(model)``
switches every LayerNorm of a model in place.
"""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.library.custom_op("lait::layer_norm", mutates_args=())
def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    # The statistics stay as ATen makes them (float32, except bf16 ones for a bf16 input on the CPU), since
    # its backward kernel wants them so; the fake below computes the same dtypes on fake tensors.
    return out.to(x.dtype), mean, rstd


@_layer_norm.register_fake
def _(x, weight, bias, eps):
    out, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    return out.to(x.dtype), mean, rstd


@torch.library.custom_op("lait::layer_norm_backward", mutates_args=())
def _layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
        grad.to(x.dtype).contiguous(), x, [x.shape[-1]], mean, rstd, weight, bias, [True, True, True])
    return grad_x, grad_weight, grad_bias


@_layer_norm_backward.register_fake
def _(grad, x, mean, rstd, weight, bias):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)


def _backward(ctx, grad_out, grad_mean, grad_rstd):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = _layer_norm_backward(grad_out, x, mean, rstd, weight, bias)
    return grad_x, grad_weight, grad_bias, None


_layer_norm.register_autograd(_backward, setup_context=_setup_context)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               keep_dtype: bool = False) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension through the opaque op: in float32 (as autocast runs it), or
    with ``keep_dtype`` in the input's dtype (statistics still accumulated in float32 by ATen's kernels).
    The weight and bias take the input's dtype too: CUDA's kernels want one dtype for all three (a bf16 input
    with float32 weights failed there, "expected scalar type BFloat16 but found Float"); their gradients come
    back in float32 through the cast."""
    if keep_dtype:
        return _layer_norm(x.contiguous(), weight.to(x.dtype), bias.to(x.dtype), eps)[0]
    return _layer_norm(x.float().contiguous(), weight.float(), bias.float(), eps)[0]


class OpaqueLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed by ATen's kernels even inside a compiled graph (float32 output).

    An instance's ``keep_dtype = True`` (an experiment of ``benchmarks/bench_train.py``) returns the input's
    dtype instead, so a bf16 residual stream stays bf16 and half the bytes move.
    """

    keep_dtype = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, self.keep_dtype)


def make_layer_norms_opaque(model: nn.Module) -> int:
    """Switch every affine ``nn.LayerNorm`` over one dimension in ``model`` to ``OpaqueLayerNorm``; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.LayerNorm and module.elementwise_affine and len(module.normalized_shape) == 1 \
                and module.bias is not None:
            module.__class__ = OpaqueLayerNorm
            count += 1
    return count


def make_layer_norms_plain(model: nn.Module) -> int:
    """Undo ``make_layer_norms_opaque``; returns how many were switched back."""
    count = 0
    for module in model.modules():
        if type(module) is OpaqueLayerNorm:
            module.__class__ = nn.LayerNorm
            count += 1
    return count
