"""What the benchmark scripts share: writing their figures to the ``--json`` file given, reading resident memory."""
from __future__ import annotations

import json


def write_json(path: str | None, results: dict) -> None:
    """Write ``results`` to ``path`` (indented JSON); nothing when no path was given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Restart this process's peak resident size (``VmHWM``) from now, so that a later ``resident_mb("VmHWM")``
    measures what came after (Linux's ``/proc/self/clear_refs``); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False
