"""Reading published detector weights from local files, safely.

``torch.load`` runs only with ``weights_only=True``. detectron2 ``.pkl`` files are plain pickles,
and unpickling can call any importable function, so a downloaded file could run code on load; they
are read with an unpickler that only rebuilds numpy arrays, numpy dtypes and builtin containers and
refuses every other global.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

# The globals a detectron2 checkpoint pickle needs: numpy's array reconstruction and dtypes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # Protocol 5 (pickle.dump(..., protocol=5)) stores an array's bytes as a buffer read back by _frombuffer.
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    # Protocol-2 pickles written by Python 3 store array bytes as latin-1 text turned back by encode().
    ("_codecs", "encode"),
}
# numpy 2 moved numpy.core to numpy._core; pickles written under numpy 1 (every published one) name the old path.
_MODULE_ALIASES = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric"}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list (it could run code); a ValueError too, for the
    CLIs' one-line bad-input errors."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS and not (module == "numpy" and name.startswith("dtype")) \
                and not (module.startswith("numpy.dtypes") and name.endswith("DType")):
            raise UnsafePickleError(f"refusing to load {module}.{name} from a weights pickle (only numpy arrays allowed)")
        module = _MODULE_ALIASES.get(module, module) if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_detectron2_pickle(path: str) -> dict[str, np.ndarray]:
    """The ``model`` mapping (parameter name -> numpy array) of a detectron2 ``.pkl`` checkpoint."""
    with open(path, "rb") as f:
        data = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a detectron2 checkpoint (expected a dict with a 'model' mapping)")
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


# torch's legacy (pre-1.6) format is a protocol-2 pickle too, but it opens with torch's magic number (a LONG1 of 10
# bytes) where a detectron2 pickle opens with its dict; torch.load reads it.
_TORCH_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def weights_format(path: str) -> str:
    """``"safetensors"``, ``"torch"`` or ``"pickle"`` (detectron2): what a weights file is, by its first bytes, and
    by its name (any case) only where they tell nothing (empty, text, damaged: its loader then says what is wrong).

    By name alone, the HF ``pytorch_model.bin`` renamed ``.pkl`` (a torch zip) or a detectron2 pickle saved as
    ``.pth`` went to the other loader and was refused as damaged. Each format stays with its own safe reader: a
    pickle only ever meets the arrays-only unpickler, a torch file ``torch.load(weights_only=True)``."""
    with open(path, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte little-endian header length, then the JSON header. A pickle cannot open so: byte 8 is
    # inside its first opcodes (protocol 2/3: the dict's memo; 4/5: the frame length's high bytes, zero).
    if len(head) > 8 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(_TORCH_LEGACY):
        return "torch"
    if head.startswith(b"\x80"):  # PROTO: a pickle of protocol 2 or later
        return "pickle"
    name = path.lower()
    return "pickle" if name.endswith(".pkl") else "safetensors" if name.endswith(".safetensors") else "torch"


def load_state(path: str) -> dict[str, torch.Tensor]:
    """A parameter mapping from a detectron2 pickle, a safetensors or a torch file (``weights_format``), as tensors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    kind = weights_format(path)
    if kind == "pickle":
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in load_detectron2_pickle(path).items()}
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return {k: v for k, v in _torch_state(path).items() if isinstance(v, torch.Tensor)}


def _torch_state(path: str, mmap: bool = False) -> dict:
    """The parameter mapping of a torch file (unwrapped from ``model``/``state_dict``); ``mmap`` maps the
    tensors' storage instead of reading it, where the file's format allows (the zip format does).

    A path named ``*.safetensors`` is read through an open file: ``torch.load`` takes any path of that name for a
    safetensors file whatever its bytes, and refused a torch checkpoint so named (no mmap then: it needs a path)."""
    if path.endswith(".safetensors"):
        with open(path, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def tensor_shape(path: str, names: Sequence[str]) -> tuple[int, ...] | None:
    """The shape of the first of ``names`` in a weights file (None: none of them), reading as little as the
    format (``weights_format``) allows: a safetensors header, a torch file memory-mapped (no tensor data read), a
    detectron2 pickle whole (a pickle has no index). For the Beam driver, which needs only a head's width."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    kind = weights_format(path)
    if kind == "safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            present = set(handle.keys())
            found = next((n for n in names if n in present), None)
            return tuple(handle.get_slice(found).get_shape()) if found else None
    state = load_detectron2_pickle(path) if kind == "pickle" else _torch_state(path, mmap=True)
    found = next((n for n in names if n in state and hasattr(state[n], "shape")), None)
    return tuple(state[found].shape) if found else None


def weights_fingerprint(path: str) -> dict:
    """What identifies a weights file's content: ``{"sha256", "bytes"}`` of the whole file.

    The whole file, not a header: a retrained ``.safetensors`` of the same architecture has the same header
    (names, shapes, offsets), so only the data tells two models apart. 250 MB took 0.3 s here (from the page cache).
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}
