"""Image bytes kept for the rest of a crawl, so one image fetched once can fill every candidate row
that shows it; past a memory budget the bytes spill to files in a temporary folder."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile

logger = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"[0-9a-f]{16,128}")


class ImageStore:
    """image_id -> bytes, in memory up to ``memory_bytes``, then on local disk."""

    def __init__(self, memory_bytes: int = 512 * 2**20, spill_dir: str | None = None):
        self.memory_bytes = memory_bytes
        self._memory: dict[str, bytes] = {}
        self._used = 0
        self._spill_parent = spill_dir
        self._spill: str | None = None
        self._on_disk: set[str] = set()

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._memory or image_id in self._on_disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._on_disk)

    def put(self, image_id: str, data: bytes) -> None:
        """Keep one image's bytes (a second put of the same id is a no-op)."""
        if image_id in self:
            return
        if self._used + len(data) <= self.memory_bytes:
            self._memory[image_id] = data
            self._used += len(data)
            return
        if self._spill is None:
            self._spill = tempfile.mkdtemp(prefix="lait-images-", dir=self._spill_parent)
            logger.info("image store over %d bytes; spilling to %s", self.memory_bytes, self._spill)
        with open(self._path(image_id), "wb") as handle:
            handle.write(data)
        self._on_disk.add(image_id)

    def _path(self, image_id: str) -> str:
        # The id is a sha256 hex digest in the crawl; anything else (a resumed job's state, a caller
        # passing a URL) is hashed, so no id can name a file outside the spill folder.
        name = image_id if SAFE_NAME.fullmatch(image_id) else hashlib.sha256(image_id.encode()).hexdigest()
        return os.path.join(self._spill, name)

    def get(self, image_id: str) -> bytes | None:
        """The bytes of a stored image, or None."""
        if image_id in self._memory:
            return self._memory[image_id]
        if image_id in self._on_disk:
            with open(self._path(image_id), "rb") as handle:
                return handle.read()
        return None

    def close(self) -> None:
        """Drop everything, spilled files included."""
        self._memory.clear()
        self._on_disk.clear()
        if self._spill:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None
