"""The fused dropout + residual + LayerNorm steps (model/fused_norm.py).

The Triton kernels themselves are checked in ``interpreted_fused_norm.py``, which has to run in a process
that set ``TRITON_INTERPRET=1`` before importing Triton; the first test here starts that process.
"""
import copy
import os

import pytest
import torch
from imagebert_testlib import random_batch, tiny_config

from model import fused_norm, triton_support
from model.imagebert import ImageBert
from tests.triton_checks import compile_for_hopper, ptxas_resources, run_interpreted


@pytest.mark.slow
def test_kernels_pass_their_checks_under_the_triton_interpreter():
    run_interpreted(os.path.join("tests", "model", "interpreted_fused_norm.py"), least=12)


@pytest.mark.skipif(triton_support.INTERPRETED, reason="this process runs the kernels themselves")
def test_without_a_gpu_the_fused_model_is_the_plain_model_dropout_included():
    config = tiny_config(dropout=0.1, attention_dropout=0.0)
    torch.manual_seed(0)
    plain = ImageBert(config).train()
    fused = copy.deepcopy(plain)
    fused.fused_norm = True
    batch = random_batch(config)
    assert not fused_norm.kernels_available(batch["region_features"])
    torch.manual_seed(5)
    expected, _ = plain.encode(batch)
    torch.manual_seed(5)
    got, _ = fused.encode(batch)
    assert torch.equal(got, expected)  # same ops, same generator draws in the same order
    torch.manual_seed(6)
    other, _ = fused.encode(batch)
    assert not torch.equal(other, expected)  # and dropout is really on


@pytest.mark.skipif(triton_support.INTERPRETED, reason="the interpreter replaces the compiler")
@pytest.mark.parametrize("dropout", [True, False])
def test_kernels_compile_for_hopper_without_a_gpu(dropout):
    """The kernels build for sm_90 as they are launched under bf16 autocast (what the interpreter cannot check:
    types, layouts), and the backward's programs, which stride over the rows, all fit on an SM at once."""
    pointers = {"h_ptr": "*bf16", "r_ptr": "*fp32", "w_ptr": "*fp32", "seed_ptr": "*i64"}
    forward = {**pointers, "b_ptr": "*fp32", "y_ptr": "*fp32", "low_ptr": "*bf16", "mean_ptr": "*fp32",
               "rstd_ptr": "*fp32", "n_cols": "i32", "p": "fp32", "eps": "fp32"}
    backward = {**pointers, "grad_ptr": "*fp32", "grad_low_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                "grad_h_ptr": "*bf16", "grad_r_ptr": "*fp32", "partial_w_ptr": "*fp32", "partial_b_ptr": "*fp32",
                "n_rows": "i32", "n_cols": "i32", "p": "fp32"}
    flags = {"BLOCK": 1024, "DROPOUT": dropout, "LOW": True}
    compile_for_hopper(fused_norm._forward_kernel, forward, flags, warps=4)
    compiled = compile_for_hopper(fused_norm._backward_kernel, backward, flags, warps=fused_norm.BACKWARD_WARPS)
    resources = ptxas_resources(compiled.asm["ptx"])
    if resources is not None:
        registers, spilled = resources
        assert spilled == 0
        assert registers * 32 * fused_norm.BACKWARD_WARPS * fused_norm.BACKWARD_PROGRAMS_PER_SM <= 65536, registers
