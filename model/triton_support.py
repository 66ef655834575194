"""Triton for LAIT's own GPU kernels (``model.fused_norm``, ``model.detectors.nms_kernel``).

Triton comes with torch's Linux wheels. Its kernels run on CUDA tensors, and on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, which must be set before Triton is imported): that is how the tests
check them on a machine without a GPU (``tests/triton_checks.py``).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - other platforms run the torch code paths
    triton = tl = None

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_available(tensor: torch.Tensor) -> bool:
    """Whether LAIT's Triton kernels can run on this tensor: CUDA, or any device under the interpreter."""
    return triton is not None and (tensor.is_cuda or INTERPRETED)
