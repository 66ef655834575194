"""Training settings of the relevance model (no torch import, so the CLI starts fast)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Training settings; defaults train the demo-scale model in well under a minute on 2 CPU cores."""

    epochs: int = 15
    batch_size: int = 64
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
