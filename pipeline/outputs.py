"""The output-folder rule of the Beam stages, which cannot resume: ``stats.json``, written last, marks a
finished run; anything else found in the folder is an interrupted run's leftovers.

Beam names its shards per run (``part-00000-of-00002`` one time, ``-of-00001`` the next; the
relevance writer uses random names), so a rerun into a folder that still held the previous shards
would add its rows to theirs.
"""
from __future__ import annotations

import logging
import posixpath
from typing import Sequence

from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

#: A stage writes its stats here while it runs and renames the file to stats.json once every shard
#: is written, so a killed run never leaves a stats.json behind.
PENDING_STATS = "_stats.pending.json"


class OutputExistsError(FileExistsError, ValueError):
    """The output folder holds a finished run (a ValueError too, for the CLIs' one-line bad-input errors)."""


def prepare_output(output: str, stage: str, parts: Sequence[str], overwrite: bool = False,
                   hint: str = "use a new --output") -> None:
    """Refuse a finished run's folder unless ``overwrite``; remove ``parts`` an interrupted run left."""
    targets = [posixpath.join(output, name) for name in (*parts, PENDING_STATS, "stats.json")]
    existing = [t for t in targets if FileSystems.exists(t)]
    finished = FileSystems.exists(posixpath.join(output, "stats.json"))
    if finished and not overwrite:
        raise OutputExistsError(f"{output} already holds a finished {stage} run ({', '.join(existing)}); {hint}")
    if existing:
        if not finished:
            logger.warning("%s: removing the partial output of an interrupted run: %s", stage, ", ".join(existing))
        FileSystems.delete(existing)


def finish_output(output: str) -> None:
    """Mark the output finished: the pending stats become stats.json (after every shard is written)."""
    FileSystems.rename([posixpath.join(output, PENDING_STATS)], [posixpath.join(output, "stats.json")])
