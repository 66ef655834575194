"""Relevance training step cost: torch's AdamW against the trainer's table optimizer, in one process.

    PYTHONPATH=. python benchmarks/bench_relevance_step.py [--train 1500] [--epochs 3] [--repeats 2]

The text embedding table is 97% of the model's parameters, and a batch touches a few hundred of its rows.
Old path: ``torch.optim.AdamW(foreach=True)`` over every parameter (what training used). New path:
``filters.relevance.train._TableAdamW`` (Adam arithmetic on the table rows that have had a gradient).
Both train one member (``_fit``) from the same seed on the recipe of ``bench_relevance.py --train N``,
one torch thread, alternately, ``--repeats`` times each; the best time of each is kept, since on a shared
machine the neighbours only ever add time. The weights of the two must be equal, bit for bit; the script
fails if they are not. Also timed: one optimizer step alone, after a real batch's backward.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from filters.relevance import features as F  # noqa: E402
from filters.relevance import train as T  # noqa: E402
from filters.relevance.config import TrainConfig  # noqa: E402
from model.relevance import RelevanceConfig, RelevanceModel  # noqa: E402
from tests.relevance.scenes import make_pairs  # noqa: E402


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_) -> None:
        pass


def _examples(n_pairs: int, image_height: int, image_size: int):
    rows = make_pairs(max(1, n_pairs // 4), seed=12, size=image_height)
    rows.sort(key=T._row_order)
    vocabulary = F.build_vocabulary((r.get("caption") for r in rows), tokenizer=F.TOKENIZER)
    arch = RelevanceConfig(image_size=image_size, num_features=len(F.TEXT_FEATURES) + len(F.IMAGE_FEATURES))
    ex, _ = T._prepare(rows, arch, frozenset(vocabulary), F.TOKENIZER)
    train_idx = np.flatnonzero(~T._held_out_mask(ex, TrainConfig().val_fraction))
    return ex, train_idx, arch


def _fit(ex, train_idx, arch, config: TrainConfig, table_rows_only: bool):
    """(seconds, state dict) of one member trained with the chosen optimizer."""
    T._TABLE_ROWS_ONLY = table_rows_only
    start = time.perf_counter()
    model, _ = T._fit(ex, train_idx, arch, config, config.seed, _NoBar())
    return time.perf_counter() - start, model.state_dict()


def _step_alone(ex, train_idx, arch, config: TrainConfig, table_rows_only: bool, steps: int = 20) -> float:
    """Seconds of one optimizer step (the mean of ``steps``), each after a real batch's backward."""
    torch.manual_seed(config.seed)
    model = RelevanceModel(arch)
    model.set_standardisation(ex.features[train_idx])
    table = model.text_encoder.embed.weight
    if table_rows_only:
        optimizer = T._TableAdamW(model.parameters(), table, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      foreach=True)
    gen = torch.Generator().manual_seed(config.seed)
    batches = T._page_batches(ex, train_idx, config.batch_size, np.random.default_rng(config.seed))
    spent = 0.0
    for batch in (batches * math.ceil(steps / len(batches)))[:steps]:
        loss = T._batch_loss(model, ex, batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        start = time.perf_counter()
        optimizer.step(rows=ex.tokens[batch]) if table_rows_only else optimizer.step()
        spent += time.perf_counter() - start
    return spent / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1500, help="pairs of the recipe (default 1500)")
    parser.add_argument("--image-height", type=int, default=200, help="scene height in px (default 200)")
    parser.add_argument("--image-size", type=int, default=TrainConfig().image_size,
                        help=f"model input side in px (default {TrainConfig().image_size}; the demo trains at 96)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each timed training (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="timed trainings of each path (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as training runs (TrainConfig.torch_threads)
    ex, train_idx, arch = _examples(args.train, args.image_height, args.image_size)
    config = TrainConfig(epochs=args.epochs, image_size=args.image_size)
    steps = args.epochs * math.ceil(len(train_idx) / config.batch_size)
    print(f"torch threads: 1, cpus visible: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    print(f"{len(train_idx)} pairs trained on, {args.image_size} px, {args.epochs} epochs, {steps} steps; "
          f"{int(torch.unique(ex.tokens[train_idx]).numel())} of {arch.num_buckets} table rows in the tokens")

    old_step = min(_step_alone(ex, train_idx, arch, config, False) for _ in range(args.repeats))
    new_step = min(_step_alone(ex, train_idx, arch, config, True) for _ in range(args.repeats))
    print(f"optimizer step alone: torch AdamW {old_step * 1e3:7.1f} ms, table optimizer {new_step * 1e3:7.1f} ms "
          f"-> {old_step / new_step:.1f}x")

    times = {False: [], True: []}
    states = {}
    for _ in range(args.repeats):
        for table_rows_only in (False, True):
            seconds, states[table_rows_only] = _fit(ex, train_idx, arch, config, table_rows_only)
            times[table_rows_only].append(seconds)
    old, new = min(times[False]), min(times[True])
    print(f"training step (forward, backward, step): torch AdamW {old / steps * 1e3:7.1f} ms, "
          f"table optimizer {new / steps * 1e3:7.1f} ms -> {old / new:.2f}x ({old:.1f} s vs {new:.1f} s)")
    same = all(torch.equal(states[False][k].view(-1).view(torch.uint8), states[True][k].view(-1).view(torch.uint8))
               for k in states[False])
    print(f"weights bit-identical: {same}; load average at the end: {os.getloadavg()[0]:.1f}")
    T._TABLE_ROWS_ONLY = True
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
