"""A Beam filesystem standing in for gs:// and s3:// in tests: ``laitobj://`` URLs over a local folder.

Names, no folders, as on an object store: ``exists`` is true for a file alone, ``match`` lists files, and
``delete`` of a name that is no file fails. Import it as ``tests.objectstore`` only: Beam picks a filesystem by
its scheme among all subclasses, and a second copy of this module (imported under another name) would
register the scheme twice, which Beam refuses.
"""
from __future__ import annotations

import os
import re

import pytest
from apache_beam.io.filesystem import BeamIOError, FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "laitobj"
PREFIX = SCHEME + "://"


class ObjectStore(LocalFileSystem):
    """The stand-in; ``root`` is the local folder that holds the "bucket" (set by the ``object_store`` fixture)."""

    root = "/nonexistent"

    @classmethod
    def scheme(cls):
        return SCHEME

    def _local(self, url: str) -> str:
        return os.path.join(self.root, url[len(PREFIX):])

    def exists(self, path):
        return os.path.isfile(self._local(path))

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def rename(self, sources, destinations):
        return super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def match(self, patterns, limits=None):
        results = []
        for pattern in patterns:
            regex = re.compile(self.translate_pattern(pattern))
            found = [FileMetadata(url, os.path.getsize(self._local(url)))
                     for folder, _, names in os.walk(self.root) for name in sorted(names)
                     if regex.match(url := PREFIX + os.path.relpath(os.path.join(folder, name), self.root))]
            results.append(MatchResult(pattern, found))
        return results

    def delete(self, paths):
        failed = {p: OSError("no such object") for p in paths if not os.path.isfile(self._local(p))}
        for path in paths:
            if path not in failed:
                os.remove(self._local(path))
        if failed:
            raise BeamIOError("Delete operation failed", failed)


@pytest.fixture
def object_store(tmp_path, monkeypatch):
    """The local folder behind ``laitobj://`` for one test (``laitobj://x`` is ``tmp_path / "x"``)."""
    monkeypatch.setattr(ObjectStore, "root", str(tmp_path))
    return tmp_path
