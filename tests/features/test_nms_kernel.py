"""The RPN's greedy NMS as one Triton kernel (model/detectors/nms_kernel.py).

The kernel's results are checked in ``interpreted_nms_kernel.py`` under Triton's interpreter (a process of
its own); here it is compiled for Hopper. The fallback to the vectorised steps: ``test_detectors.py``.
"""
import os

import pytest

from model import triton_support
from model.detectors import nms_kernel
from tests.triton_checks import compile_for_hopper, ptxas_resources, run_interpreted


@pytest.mark.slow
def test_kernel_passes_its_checks_under_the_triton_interpreter():
    run_interpreted(os.path.join("tests", "features", "interpreted_nms_kernel.py"), least=10)


@pytest.mark.skipif(triton_support.INTERPRETED, reason="the interpreter replaces the compiler")
@pytest.mark.parametrize("grouped, keep_block", [(False, 512), (True, 1024)])  # vg's 300 keeps, coco's 1,000
def test_kernel_compiles_for_hopper_without_spilling(grouped, keep_block):
    signature = {"boxes_ptr": "*fp32", "alive_ptr": "*i1", "group_ptr": "*i64", "keep_ptr": "*i64", "count": "i32",
                 "max_keep": "i32", "iou_thresh": "fp32"}
    compiled = compile_for_hopper(nms_kernel._greedy_nms_kernel, signature,
                                  {"KEEP_BLOCK": keep_block, "GROUPED": grouped}, warps=1 if keep_block <= 512 else 2)
    assert "div.rn.f32" in compiled.asm["ptx"]  # IoU divided as PyTorch divides: the same boxes as the steps
    resources = ptxas_resources(compiled.asm["ptx"])
    if resources is not None:
        assert resources[1] == 0, resources

