"""Signal masking around the start of child processes, shared by the crawl (``crawler.runner``) and the relevance
trainer (``filters.relevance.train``). Standard library only: both import it early, one in every crawl process."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterable, Iterator


@contextlib.contextmanager
def blocked_signals(signals: Iterable[signal.Signals]) -> Iterator[None]:
    """Block ``signals`` in this thread for the body, then restore the mask it had before, also when the body raises.

    A child started meanwhile inherits the blocked mask (kept across exec), and one of ``signals`` that comes
    meanwhile stays pending: it is delivered on exit, once the body has done what it must not be interrupted in
    (starting and recording every child, so that none goes unwaited for)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
