"""The one-line error of a weights file its loader failed on (``unreadable_weights``), for the detectors' weights
and BERT's alike. A module of its own, without torch or torchvision: BERT's loading reads it on every call, and
the training install has no torchvision, which ``model.detectors`` imports."""
from __future__ import annotations

import re

_PICKLE_PROTOCOL = b"\x80"  # a pickle of protocol 2 or later (torch's legacy format too) opens with PROTO
_ZIP = b"PK\x03\x04"  # torch's checkpoint format since 1.6 is a zip archive
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def unreadable_weights(path: str, exc: BaseException, whose: str = "this detector's") -> ValueError:
    """The one-line error of a weights file its loader failed on: what the file should be (a safetensors file by
    its name, else a PyTorch checkpoint or pickle), and what it is instead, from its first bytes (empty, text, a
    Git LFS pointer), or the loader's reason for a file of that format that is damaged (``whose``: the weights it
    should hold, e.g. "a BERT model's"). The loaders' own errors say little: a text file fails the unpickler with
    ``KeyError: 101`` (its memo), torch's safe loader with advice to load it unsafely."""
    safetensors = path.lower().endswith(".safetensors")
    kind = "a safetensors file" if safetensors else "a PyTorch checkpoint or pickle file"
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        head = None
    if head == b"":
        what = f"not {kind}: the file is empty"
    elif head is not None and head.startswith(_LFS_POINTER):
        # A clone without git-lfs (or a Hugging Face repository cloned so) leaves these ~130-byte stand-ins.
        what = f"not {kind}: it is a Git LFS pointer, not the file it points to (fetch it: git lfs pull)"
    elif head is not None and _is_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:40]
        what = f"not {kind}: it holds text ({first!r}{'...' if len(first) == 40 else ''})"
    else:
        looks_right = head is not None and (head[8:9] == b"{" if safetensors else
                                            head.startswith(_PICKLE_PROTOCOL) or head.startswith(_ZIP))
        what = (f"{kind}, but it does not load: damaged, or not {whose} ({_loader_reason(exc)})"
                if looks_right else f"not {kind} ({_loader_reason(exc)})")
    return ValueError(f"{path}: not a readable weights file: {what}")


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are text (UTF-8 without control characters but whitespace)."""
    if b"\0" in head:
        return False
    text = head.decode("utf-8", "ignore") if len(head) == 256 else head.decode("utf-8", "replace")
    if "\ufffd" in text or len(text.encode()) < len(head) - 3:  # bytes that are not UTF-8
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _loader_reason(exc: BaseException) -> str:
    """A loader's error on one short line: its type and first sentence(s) (torch's safe loader: the unpickler's
    reason). Lines are joined first: the unpickler breaks a sentence across two ("A load persistent id instruction
    was encountered," then "but no persistent_load function was specified."), which ended the reason at the comma."""
    message = str(exc)
    refused = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    lines = [part.strip() for part in message.splitlines() if part.strip()]
    line = refused.group(1) if refused else " ".join(lines)
    if len(line) > 160:  # whole sentences where they fit
        cut = line.rfind(". ", 0, 160)
        line = line[:cut + 1] if cut > 40 else line[:157] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
