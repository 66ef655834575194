"""The crawl's items: a candidate row or a rejected row, in the shapes of their Parquet schemas."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class CandidateItem:
    """One (page, image, text) candidate with its image bytes: a row of the candidates schema."""

    row: dict[str, Any]


@dataclasses.dataclass
class RejectedItem:
    """A page, image or reference that did not become a candidate, with a snake_case reason."""

    row: dict[str, Any]
