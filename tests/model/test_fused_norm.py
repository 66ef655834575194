"""The fused dropout + residual + LayerNorm steps (model/fused_norm.py).

The Triton kernels themselves are checked in ``interpreted_fused_norm.py``, which has to run in a process
that set ``TRITON_INTERPRET=1`` before importing Triton; the first test here starts that process.
"""
import copy
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
from imagebert_testlib import REPO, random_batch, tiny_config

from model import fused_norm
from model.imagebert import ImageBert


@pytest.mark.slow
def test_kernels_pass_their_checks_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join("tests", "model", "interpreted_fused_norm.py")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 11 and "skipped" not in summary, summary


@pytest.mark.skipif(fused_norm.INTERPRETED, reason="this process runs the kernels themselves")
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



@pytest.mark.skipif(fused_norm.INTERPRETED, reason="the interpreter replaces the compiler")
@pytest.mark.parametrize("dropout", [True, False])
def test_kernels_compile_for_hopper_without_a_gpu(dropout):
    """Triton's own compiler (with its bundled ptxas) builds the kernels for sm_90, the H100/H200's architecture,
    as they are launched under bf16 autocast: what the interpreter cannot check (types, layouts) fails here."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    pointers = {"h_ptr": "*bf16", "r_ptr": "*fp32", "w_ptr": "*fp32", "seed_ptr": "*i64"}
    forward = {**pointers, "b_ptr": "*fp32", "y_ptr": "*fp32", "low_ptr": "*bf16", "mean_ptr": "*fp32",
               "rstd_ptr": "*fp32", "n_cols": "i32", "p": "fp32", "eps": "fp32"}
    backward = {**pointers, "grad_ptr": "*fp32", "grad_low_ptr": "*bf16", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                "grad_h_ptr": "*bf16", "grad_r_ptr": "*fp32", "partial_w_ptr": "*fp32", "partial_b_ptr": "*fp32",
                "n_rows": "i32", "n_cols": "i32", "p": "fp32"}
    flags = {"BLOCK": 1024, "DROPOUT": dropout, "LOW": True}
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for kernel, signature, warps in ((fused_norm._forward_kernel, forward, 4),
                                     (fused_norm._backward_kernel, backward, fused_norm.BACKWARD_WARPS)):
        names = [name for name in kernel.arg_names if name not in flags]
        assert sorted(names) == sorted(signature), kernel.fn.__name__
        source = ASTSource(fn=kernel, signature={**{n: signature[n] for n in names}, **dict.fromkeys(flags, "constexpr")},
                           constexprs=flags)
        compiled = compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert ".target sm_90" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 1000
        if kernel is fused_norm._backward_kernel and os.path.exists(ptxas):
            # the backward's programs must all be resident at once (they stride over the rows): registers allow it
            info = _ptxas_info(ptxas, compiled.asm["ptx"])
            registers = int(re.search(r"Used (\d+) registers", info).group(1))
            assert " 0 bytes spill stores" in info, info
            assert registers * 32 * warps * fused_norm.BACKWARD_PROGRAMS_PER_SM <= 65536, info


def _ptxas_info(ptxas: str, ptx: str) -> str:
    """ptxas's resource report for a PTX module (sm_90a, the target Triton writes for Hopper)."""
    target = re.search(r"\.target (sm_\w+)", ptx).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    try:
        result = subprocess.run([ptxas, f"-arch={target}", "-v", handle.name, "-o", os.devnull],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(handle.name)
    assert result.returncode == 0, result.stderr
    return result.stderr + result.stdout
