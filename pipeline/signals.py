"""Signal masking around the start of child processes, and children that die with their parent, shared by the crawl
(``crawler.runner``) and the relevance trainer (``filters.relevance.train``). Standard library only: both import it
early, one in every crawl process."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Iterable, Iterator


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


def die_with_parent_hook(parent: int | None = None) -> Callable[[], None] | None:
    """A hook that makes the process calling it get SIGTERM when its parent dies, even by SIGKILL (Linux; None
    elsewhere, or where libc's ``prctl`` cannot be found).

    Without it a killed parent leaves its children running unseen: a crawl process that a rerun into the same folder
    would race, a relevance member blocked for good on a queue nobody reads. ``parent``: the pid the caller's parent
    must have, by default this process (a hook made in the parent and run in the child between fork and exec: libc
    is loaded here, in the parent, as importing is not safe there). A parent already gone when the hook runs (its
    death came before the call, so no SIGTERM will) ends the caller at once.

    Linux sends the signal when the parent *thread* that started the child ends: start the child from a thread that
    outlives it (the main thread, or the one that waits for it).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid() if parent is None else parent

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: act on it now
            os.kill(os.getpid(), signal.SIGTERM)

    return hook
