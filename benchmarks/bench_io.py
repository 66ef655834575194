"""What every benchmark script shares: writing its figures to the ``--json`` file it was given."""
from __future__ import annotations

import json


def write_json(path: str | None, results: dict) -> None:
    """Write ``results`` to ``path`` (indented JSON); nothing when no path was given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
