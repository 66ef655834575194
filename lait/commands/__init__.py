"""One module per `lait` subcommand; each exposes ``register(subparsers)``."""
from __future__ import annotations

import argparse


def count(minimum: int, least: str | None = None):
    """An argparse ``type``: a whole number of at least ``minimum``, else a one-line usage error (``least``: how
    the message names the minimum, e.g. "0 (one per CPU)")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {least or minimum} or more, got {value}")
        return value

    parse.__name__ = f"count>={minimum}"
    return parse


positive = count(1)
non_negative = count(0)
