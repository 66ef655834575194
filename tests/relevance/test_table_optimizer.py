"""The trainer's embedding-table optimizer (``_TableAdamW``) makes torch's AdamW updates, bit for bit.

It does the Adam arithmetic of the text embedding table on the rows that have had a gradient only; the weights
(and the optimizer state) must be the ones ``torch.optim.AdamW(foreach=True)`` makes, since trained models, and
the demo's figures, depend on them to the last bit.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from filters.relevance import train as T


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A float32 tensor's bit patterns: unlike torch.equal, tells -0 from +0 and compares NaNs."""
    return t.detach().contiguous().view(torch.int32)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(64, 8, mode="mean", padding_idx=0)
        self.other = nn.Linear(8, 3)
        self.extra = nn.Linear(4, 1)  # unused in some steps: no gradient, no step


def _pair(weight_decay: float):
    torch.manual_seed(0)
    plain, table = _Tiny(), _Tiny()
    table.load_state_dict(plain.state_dict())
    reference = torch.optim.AdamW(plain.parameters(), lr=0.05, weight_decay=weight_decay, foreach=True)
    contender = T._TableAdamW(table.parameters(), table.embed.weight, lr=0.05, weight_decay=weight_decay)
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=40, pct_start=0.15)
                  for o in (reference, contender)]  # cycles lr and beta1, as training does
    return (plain, reference, schedulers[0]), (table, contender, schedulers[1])


@pytest.mark.parametrize("weight_decay, hinted", [(0.3, True), (0.3, False), (0.0, True)])
def test_table_adamw_steps_as_torch_adamw(weight_decay, hinted):
    """Over 40 steps whose batches touch changing rows (some once, early, then never again; padding tokens;
    a step where the table gets no gradient), every parameter and every moment equals torch's, bit for bit;
    with the rows hinted (as training does) and found by scanning the gradient."""
    runs = _pair(weight_decay)
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        high = 64 if step < 5 else 20  # rows 20..63 are touched in the first steps only
        tokens = torch.randint(0, high, (6, 5), generator=gen)
        tokens[:, -2:] = 0  # padding
        uses_table = step % 7 != 3
        for model, optimizer, scheduler in runs:
            optimizer.zero_grad(set_to_none=True)
            x = model.embed(tokens) if uses_table else torch.ones(6, 8)
            loss = model.other(x).square().mean()
            if step % 2:
                loss = loss + model.extra(torch.ones(2, 4)).sum()
            loss.backward()
            if isinstance(optimizer, T._TableAdamW) and hinted:
                optimizer.step(rows=tokens)
            else:
                optimizer.step()
            scheduler.step()
        (plain, reference, _), (table, contender, _) = runs
        for (name, a), b in zip(plain.named_parameters(), table.parameters()):
            assert torch.equal(_bits(a), _bits(b)), (step, name)
            if a in reference.state:
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(reference.state[a][key], contender.state[b][key]), (step, name, key)
                assert torch.equal(_bits(reference.state[a]["exp_avg"]), _bits(contender.state[b]["exp_avg"]))
            else:
                assert b not in contender.state or not contender.state[b], (step, name)
    # both kinds of row were there: some touched early only (their moments decay), some never (decay only)
    assert 0 < int(contender.state[table.embed.weight]["touched_rows"][20:].sum()) < 44


def test_table_adamw_takes_torch_adamw_state():
    """A state without the touched-rows mask (torch's own, loaded) goes on as torch would from it."""
    torch.manual_seed(0)
    plain, table = _Tiny(), _Tiny()
    table.load_state_dict(plain.state_dict())
    reference, before = (torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1, foreach=True)
                         for m in (plain, table))
    contender = T._TableAdamW(table.parameters(), table.embed.weight, lr=0.05, weight_decay=0.1)
    tokens = torch.tensor([[3, 4, 0], [5, 3, 9]])
    for model, optimizer in ((plain, reference), (table, before)):
        optimizer.zero_grad(set_to_none=True)
        model.other(model.embed(tokens)).sum().backward()
        optimizer.step()
    contender.load_state_dict(before.state_dict())
    tokens = torch.tensor([[7, 3, 0], [1, 2, 2]])
    for model, optimizer in ((plain, reference), (table, contender)):
        optimizer.zero_grad(set_to_none=True)
        model.other(model.embed(tokens)).sum().backward()
        optimizer.step()
    for a, b in zip(plain.parameters(), table.parameters()):
        assert torch.equal(_bits(a), _bits(b))
    assert contender.state[table.embed.weight]["touched_rows"].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 7, 9]


def test_training_writes_the_weights_torch_adamw_writes(tmp_path, monkeypatch):
    """``train`` with the table optimizer, its members in two processes, saves the very bytes that training with
    torch's AdamW in this process saves."""
    from filters.relevance.config import TrainConfig
    from tests.relevance.scenes import make_pairs

    rows = make_pairs(12, seed=4, size=64)
    config = dict(epochs=2, batch_size=16, image_size=32, members=2)
    T.train(rows, str(tmp_path / "table"), TrainConfig(**config, processes=2))
    monkeypatch.setattr(T, "_TABLE_ROWS_ONLY", False)
    T.train(rows, str(tmp_path / "plain"), TrainConfig(**config, processes=1))
    table = (tmp_path / "table" / "model.safetensors").read_bytes()
    assert table == (tmp_path / "plain" / "model.safetensors").read_bytes()
