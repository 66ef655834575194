"""Training settings of the relevance model (no torch import, so the CLI starts fast)."""
from __future__ import annotations

import math
from dataclasses import dataclass


#: The largest ``image_size``: the CNN needs no more, and every training image is held in memory at this side
#: (3 x 1024 x 1024 bytes each); a side of 50,000 asked for 7.5 GB per image.
MAX_IMAGE_SIZE = 1024
#: The largest ``embed_dim``: the widest layer ``model.relevance`` loads (``MAX_WIDTH``), so that every model
#: trained here loads (64 by default).
MAX_EMBED_DIM = 4096


@dataclass
class TrainConfig:
    """Training settings; defaults train the demo-scale model in well under a minute on 2 CPU cores."""

    epochs: int = 15
    batch_size: int = 64  # at least 2: the negatives are in-batch re-pairings
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2  # share of pages held out to set the threshold
    mismatch_cost: float = 0.5  # cost of keeping a mismatch, relative to losing a true pair (1 = Youden's J)
    seed: int = 0
    max_pairs: int | None = 100_000  # images are held in memory, downscaled
    drop_rate: float = 0.15  # share of each batch's worst-fitting pairs ignored (label noise)
    trust_after: float = 0.2  # ... from this share of the training steps on
    torch_threads: int | None = 1  # small convolutions: one thread beats two on 2 cores (None: torch's choice)
    image_size: int = 64
    embed_dim: int = 64
    members: int = 3  # models trained from seeds seed, seed+1, ...; more than one are saved as an averaging ensemble
    processes: int | None = None  # members trained side by side in processes (None: one per CPU core, up to members)

    def __post_init__(self):
        """Every setting checked once, here, so that a bad one is a clear ValueError before any training
        (not a ZeroDivisionError, a NaN loss or an untrained model saved as a trained one)."""
        for name in ("epochs", "image_size", "embed_dim"):
            _whole(name, getattr(self, name), 1)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size} (every training "
                             "image is held in memory at this side)")
        if self.embed_dim > MAX_EMBED_DIM:
            raise ValueError(f"embed_dim must be at most {MAX_EMBED_DIM}, got {self.embed_dim} (a model with a wider "
                             "embedding is refused as it loads)")
        _whole("batch_size", self.batch_size, 2)  # a one-pair batch has no re-pairing to learn from
        _whole("seed", self.seed, 0)
        _whole("members", self.members, 1)
        for name, minimum in (("max_pairs", 2), ("processes", 1), ("torch_threads", 1)):
            if getattr(self, name) is not None:
                _whole(name, getattr(self, name), minimum)
        # Above MAX_LR AdamW's float32 step overflows (1e38 failed with a traceback); no training wants a tenth of it.
        _number("lr", self.lr, low=0.0, high=MAX_LR, low_open=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("mismatch_cost", self.mismatch_cost, low=0.0)
        _number("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
        _number("drop_rate", self.drop_rate, low=0.0, high=1.0, high_open=True)
        _number("trust_after", self.trust_after, low=0.0, high=1.0)


#: The largest learning rate taken (``--lr``): the tests blow trainings up on purpose with 30 and 1000.
MAX_LR = 1e6


def _whole(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def _number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> None:
    """A finite number in [low, high] (an open end where asked)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        if math.isinf(high):  # "in [0, inf]" read as if inf were taken
            raise ValueError(f"{name} must be a finite number {'above' if low_open else 'at least'} {low:g}, "
                             f"got {value!r}")
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{low:g}, {high:g}{right}, got {value!r}")
