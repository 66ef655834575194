"""The one decision type every LAIT filter returns, and the small base class filters share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Decision:
    """What a filter decided about one record: keep it or not, why not, and the score it looked at.

    ``reason`` is a short snake_case name (``text_too_short``) and is set exactly when ``keep`` is
    false. ``score`` is the quantity the threshold was applied to (word count, OOV rate, language
    probability, ...), kept so that thresholds can be re-tuned from the output alone.
    """

    keep: bool
    reason: str | None = None
    score: float | None = None
    detail: str | None = None

    def __post_init__(self):
        if self.keep == (self.reason is not None):
            raise ValueError("a Decision has a reason exactly when it rejects")

    @classmethod
    def accept(cls, score: float | None = None, detail: str | None = None) -> "Decision":
        """A keep decision."""
        return cls(True, None, score, detail)

    @classmethod
    def reject(cls, reason: str, score: float | None = None, detail: str | None = None) -> "Decision":
        """A reject decision with its reason."""
        return cls(False, reason, score, detail)

    def as_dict(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict."""
        return {"keep": self.keep, "reason": self.reason, "score": self.score, "detail": self.detail}


class Filter:
    """A filter looks at one record (a mapping) and returns a Decision; it never mutates the record.

    Subclasses set ``name`` and ``reasons`` (every reason they can return) and implement ``__call__``.
    ``decide_batch`` exists so that filters that are faster on batches (language ID) can override it.
    """

    name: str = "filter"
    reasons: tuple[str, ...] = ()

    def __call__(self, record: Mapping[str, Any]) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def decide_batch(self, records: Iterable[Mapping[str, Any]]) -> list[Decision]:
        """Decisions for many records, in order."""
        return [self(record) for record in records]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def location_key(url: str | None) -> str:
    """A URL without its scheme, credentials and port: what names a page or image however its site was served.

    Ids hash whole URLs, port included; orders and tie-breaks that use this instead come out the same
    when the same site is crawled from another port (the demo serves on a free one).
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.netloc:
        return url
    return f"{parts.hostname or ''}{parts.path}" + (f"?{parts.query}" if parts.query else "")
