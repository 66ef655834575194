"""BERT's sublayer output, ``LayerNorm(residual + dropout(h))``, as one Triton kernel each way.

A post-LayerNorm encoder ends every attention and feed-forward block with a dropout, a residual add and a
LayerNorm. Compiled with ``model.layer_norm``'s opaque LayerNorm, each of ImageBERT-base's 24 such sites
costs about five passes over the [tokens, 768] activations forward (dropout and add, the norm, the cast of
its float32 output to bf16 for the next matrix multiply) and six backward (the two incoming gradients
summed, ATen's input and weight gradients, the dropout backward), about 3.4 GB per site for a batch of
512 x 140 tokens. On an H100 the memory-bound part of a training step is what separates it from the
issue's 4,200 samples/s (``benchmarks/RESULTS_train.md``).

Here the forward reads ``h`` and the residual once and writes the float32 output and its bf16 copy;
nothing else is stored: the dropout mask is regenerated from a per-call seed (Philox, ``tl.rand``) and the
sum ``residual + dropout(h)`` is recomputed in the backward, which reads both incoming gradients, ``h`` and
the residual once and writes the gradients of ``h`` and of the residual plus per-program partial sums of
the weight and bias gradients (about 1.7 GB per site in all). The pair is a ``torch.library`` custom op,
so ``torch.compile`` keeps it whole.

The kernels run on CUDA, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the tests check them on a machine without a GPU. Elsewhere ``add_dropout_layer_norm`` computes the
same function with plain torch ops (its own dropout stream).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.triton_support import kernels_available, tl, triton


if triton is not None:

    @triton.jit
    def _forward_kernel(h_ptr, r_ptr, w_ptr, b_ptr, seed_ptr, y_ptr, low_ptr, mean_ptr, rstd_ptr, n_cols, p, eps,
                        BLOCK: tl.constexpr, DROPOUT: tl.constexpr, LOW: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        offsets = row * n_cols + cols
        h = tl.load(h_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = tl.rand(tl.load(seed_ptr), offsets) >= p
            h = tl.where(keep, h / (1.0 - p), 0.0)
        s = h + tl.load(r_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        mean = tl.sum(s, axis=0) / n_cols
        centred = tl.where(inside, s - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        y = centred * rstd * w + b
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)
        if LOW:
            tl.store(low_ptr + offsets, y.to(low_ptr.dtype.element_ty), mask=inside)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _backward_kernel(grad_ptr, grad_low_ptr, h_ptr, r_ptr, w_ptr, mean_ptr, rstd_ptr, seed_ptr,
                         grad_h_ptr, grad_r_ptr, partial_w_ptr, partial_b_ptr, n_rows, n_cols, p,
                         BLOCK: tl.constexpr, DROPOUT: tl.constexpr, LOW: tl.constexpr):
        program = tl.program_id(0)
        programs = tl.num_programs(0)
        cols = tl.arange(0, BLOCK)
        inside = cols < n_cols
        w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        sum_w = tl.zeros([BLOCK], dtype=tl.float32)
        sum_b = tl.zeros([BLOCK], dtype=tl.float32)
        if DROPOUT:
            seed = tl.load(seed_ptr)
        for row in range(program, n_rows, programs):
            offsets = row * n_cols + cols
            h = tl.load(h_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            if DROPOUT:
                keep = tl.rand(seed, offsets) >= p
                h = tl.where(keep, h / (1.0 - p), 0.0)
            s = h + tl.load(r_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            normed = tl.where(inside, (s - tl.load(mean_ptr + row)) * tl.load(rstd_ptr + row), 0.0)
            grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            if LOW:
                grad += tl.load(grad_low_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            scaled = grad * w
            inner = tl.sum(scaled * normed, axis=0) / n_cols
            total = tl.sum(scaled, axis=0) / n_cols
            grad_s = (scaled - normed * inner - total) * tl.load(rstd_ptr + row)
            grad_s = tl.where(inside, grad_s, 0.0)
            tl.store(grad_r_ptr + offsets, grad_s.to(grad_r_ptr.dtype.element_ty), mask=inside)
            grad_h = grad_s
            if DROPOUT:
                grad_h = tl.where(keep, grad_s / (1.0 - p), 0.0)
            tl.store(grad_h_ptr + offsets, grad_h.to(grad_h_ptr.dtype.element_ty), mask=inside)
            sum_w += grad * normed
            sum_b += grad
        tl.store(partial_w_ptr + program * n_cols + cols, sum_w, mask=inside)
        tl.store(partial_b_ptr + program * n_cols + cols, sum_b, mask=inside)

    @triton.jit
    def _keep_mask_kernel(seed_ptr, keep_ptr, numel, p, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        keep = tl.rand(tl.load(seed_ptr), offsets) >= p
        tl.store(keep_ptr + offsets, keep.to(tl.int8), mask=offsets < numel)


def _block(n_cols: int) -> tuple[int, int]:
    """Block width (a power of two covering a row) and warps, as Triton's LayerNorm tutorial picks them."""
    block = triton.next_power_of_2(n_cols)
    return block, min(max(block // 256, 1), 8)


# The backward's programs each stride over rows keeping their weight and bias partial sums in registers, so
# all of them should be resident at once: compiled for sm_90 (Triton 3.8) at 8 warps the kernel uses 48
# registers per thread, 12k per program, so four programs per SM fit (32 warps), with no spills.
BACKWARD_WARPS = 8
BACKWARD_PROGRAMS_PER_SM = 4


def _backward_programs(rows: int, device: torch.device) -> int:
    """Programs for the backward: as many as the SMs hold at once on CUDA, a few under the interpreter."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, BACKWARD_PROGRAMS_PER_SM * sms))
    return max(1, min(rows, 4))  # the interpreter runs programs one after another


def _check(h: torch.Tensor, residual: torch.Tensor) -> None:
    if not kernels_available(h):
        raise RuntimeError("lait::add_dropout_layer_norm runs on CUDA tensors (or under TRITON_INTERPRET=1); "
                           "call model.fused_norm.add_dropout_layer_norm, which falls back to torch ops")
    if h.shape != residual.shape or h.dim() != 2:
        raise ValueError(f"h {tuple(h.shape)} and residual {tuple(residual.shape)} must be the same [rows, hidden]")
    if h.numel() >= 2 ** 31:  # the dropout stream is indexed by 32-bit element offsets
        raise ValueError(f"{h.numel():,} elements: split the batch (the kernel indexes elements with 32 bits)")


@torch.library.custom_op("lait::add_dropout_layer_norm", mutates_args=())
def _fused_forward(h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   seed: torch.Tensor, p: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(h, residual)
    rows, cols = h.shape
    out = torch.empty_like(residual)
    low = torch.empty_like(h) if h.dtype != residual.dtype else h.new_empty(0)
    mean = torch.empty(rows, dtype=torch.float32, device=h.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=h.device)
    block, warps = _block(cols)
    _forward_kernel[(rows,)](h, residual, weight, bias, seed, out, low if low.numel() else out, mean, rstd, cols,
                             p, eps, BLOCK=block, DROPOUT=p > 0, LOW=low.numel() > 0, num_warps=warps)
    return out, low, mean, rstd


@_fused_forward.register_fake
def _(h, residual, weight, bias, seed, p, eps):
    rows = h.shape[0]
    low = torch.empty_like(h) if h.dtype != residual.dtype else h.new_empty(0)
    return (torch.empty_like(residual), low, h.new_empty(rows, dtype=torch.float32),
            h.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("lait::add_dropout_layer_norm_backward", mutates_args=())
def _fused_backward(grad: torch.Tensor, grad_low: torch.Tensor, h: torch.Tensor, residual: torch.Tensor,
                    weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, seed: torch.Tensor,
                    p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(h, residual)
    rows, cols = h.shape
    grad, grad_low = grad.contiguous(), grad_low.contiguous()
    grad_h = torch.empty_like(h)
    grad_residual = torch.empty_like(residual)
    programs = _backward_programs(rows, h.device)
    partial_w = torch.empty(programs, cols, dtype=torch.float32, device=h.device)
    partial_b = torch.empty(programs, cols, dtype=torch.float32, device=h.device)
    block, _ = _block(cols)
    low = grad_low.numel() > 0
    _backward_kernel[(programs,)](grad, grad_low if low else grad, h, residual, weight, mean, rstd, seed, grad_h,
                                  grad_residual, partial_w, partial_b, rows, cols, p, BLOCK=block,
                                  DROPOUT=p > 0, LOW=low, num_warps=BACKWARD_WARPS)
    return grad_h, grad_residual, partial_w.sum(0).to(weight.dtype), partial_b.sum(0).to(weight.dtype)


@_fused_backward.register_fake
def _(grad, grad_low, h, residual, weight, mean, rstd, seed, p):
    return torch.empty_like(h), torch.empty_like(residual), torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    h, residual, weight, _, seed, p, _ = inputs
    _, low, mean, rstd = output
    ctx.save_for_backward(h, residual, weight, mean, rstd, seed)
    ctx.p = p
    ctx.low = low.numel() > 0


def _backward(ctx, grad, grad_low, grad_mean, grad_rstd):
    h, residual, weight, mean, rstd, seed = ctx.saved_tensors
    if grad is None:
        grad = torch.zeros_like(residual)
    if not ctx.low or grad_low is None:
        grad_low = h.new_empty(0) if not ctx.low else torch.zeros_like(h)
    grad_h, grad_residual, grad_weight, grad_bias = _fused_backward(grad, grad_low, h, residual, weight, mean, rstd,
                                                                    seed, ctx.p)
    return grad_h, grad_residual, grad_weight, grad_bias, None, None, None


_fused_forward.register_autograd(_backward, setup_context=_setup_context)


def add_dropout_layer_norm(h: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm, p: float,
                           training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(residual + dropout(h))``, and the same values in ``h``'s dtype for the next matrix multiply.

    Under bf16 autocast ``h`` (a linear's output) is bf16 and the residual stream float32: the first result
    is float32, as the unfused LayerNorm gives it, the second its bf16 copy from the same kernel. With equal
    dtypes both results are the same tensor. Without a GPU (and without the interpreter) this is the plain
    composition of torch ops.
    """
    p = p if training else 0.0
    if not kernels_available(h):
        out = norm(residual + F.dropout(h, p, training))
        return out, out
    shape = residual.shape
    hidden = shape[-1]
    if p > 0:
        seed = torch.randint(0, 2 ** 31 - 1, (1,), device=h.device)  # from torch's generator: exact resume keeps it
    else:
        seed = torch.zeros(1, dtype=torch.int64, device=h.device)
    out, low, _, _ = _fused_forward(h.reshape(-1, hidden).contiguous(), residual.reshape(-1, hidden).contiguous(),
                                    norm.weight, norm.bias, seed, float(p), float(norm.eps))
    out = out.view(shape)
    return out, (low.view(shape) if low.numel() else out)


def dropout_keep_mask(seed: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The keep mask (bool) that the kernels draw for ``seed`` over a contiguous tensor of ``shape``."""
    numel = 1
    for size in shape:
        numel *= size
    keep = torch.empty(numel, dtype=torch.int8, device=seed.device)
    block = 1024
    _keep_mask_kernel[(triton.cdiv(numel, block),)](seed, keep, numel, p, BLOCK=block)
    return keep.view(shape).bool()
