"""Exact masking, the static-shape heads it allows, the whole-model compile and the opaque LayerNorm."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from model.config import ConfigError, resolved_compile_scope, train_config_from_dict
from model.imagebert import ImageBert
from model.layer_norm import OpaqueLayerNorm, make_layer_norms_opaque, make_layer_norms_plain
from model.tasks import IGNORE, choose_exact, exact_slots, prepare_pretrain_batch, slot_positions
from imagebert_testlib import random_batch, tiny_config

EXACT = SimpleNamespace(mlm_prob=0.15, region_mask_prob=0.15, region_zero_prob=0.9, itm_neg_prob=0.5, masking="exact")
IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "first_regular": 5}
TASKS = {"mlm": 1.0, "moc": 1.0, "mrfr": 1.0, "itm": 1.0}


def test_exact_masking_chooses_berts_count_in_every_row():
    width = 40
    counts = [0, 1, 2, 3, 4, 7, 10, 13, 17, 30, 40]
    candidates = torch.zeros(len(counts), width, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    for row, n in enumerate(counts):  # candidates scattered, not a prefix
        candidates[row, torch.randperm(width, generator=g)[:n]] = True
    for seed in range(5):
        draw = torch.rand(candidates.shape, generator=torch.Generator().manual_seed(seed))
        chosen = choose_exact(candidates, draw, 0.15)
        assert not (chosen & ~candidates).any()
        expected = [0 if n == 0 else max(1, int(n * 0.15 + 0.5)) for n in counts]  # round half up, at least one
        assert chosen.sum(1).tolist() == expected
        assert chosen.sum(1).max() <= exact_slots(width, 0.15) == 6


def test_exact_masking_is_uniform_over_the_candidates():
    candidates = torch.ones(4000, 20, dtype=torch.bool)
    chosen = choose_exact(candidates, torch.rand(candidates.shape, generator=torch.Generator().manual_seed(1)), 0.15)
    rate = chosen.float().mean(0)  # 3 of 20 per row: 0.15 per position
    assert torch.allclose(rate, torch.full_like(rate, 0.15), atol=0.025)


def test_slot_positions_list_the_chosen_items_first():
    chosen = torch.tensor([[False, True, False, True, False], [False] * 5, [True, True, True, False, False]])
    positions = slot_positions(chosen, 3)
    assert positions.tolist()[0][:2] == [1, 3] and positions.tolist()[2] == [0, 1, 2]
    assert chosen.gather(1, positions).sum().item() == chosen.sum().item(), "every chosen item has a slot"


def test_exact_batch_carries_slots_that_hold_every_masked_item():
    config = tiny_config()
    batch = random_batch(config, size=16, seed=3)
    batch["image_keys"] = torch.arange(16)
    out = prepare_pretrain_batch(batch, TASKS, EXACT, config, IDS, torch.Generator().manual_seed(5))
    text_slots, region_slots = out["mlm_positions"].shape[1], out["region_positions"].shape[1]
    assert text_slots == exact_slots(out["input_ids"].shape[1], 0.15)
    assert region_slots == exact_slots(out["region_mask"].shape[1], 0.15)
    labels = out["mlm_labels"]
    assert (labels.gather(1, out["mlm_positions"]) != IGNORE).sum() == (labels != IGNORE).sum()
    assert out["region_masked"].gather(1, out["region_positions"]).sum() == out["region_masked"].sum()
    assert (labels[~out["itm_labels"]] == IGNORE).all(), "the conditional mask still holds"


@pytest.mark.parametrize("moc_loss", ["ce", "kl"])
def test_slot_heads_give_the_same_losses_as_the_gathering_heads(moc_loss):
    config = tiny_config()
    torch.manual_seed(0)
    model = ImageBert(config, moc_loss=moc_loss).eval()
    batch = random_batch(config, size=12, seed=7)
    batch["image_keys"] = torch.arange(12)
    batch["region_classes"][0, :2] = config.num_classes  # out of range: ignored by both
    prepared = prepare_pretrain_batch(batch, TASKS, EXACT, config, IDS, torch.Generator().manual_seed(1))
    dynamic = {k: v for k, v in prepared.items() if k not in ("mlm_positions", "region_positions")}
    slots, _ = model(prepared, TASKS)
    gathered, _ = model(dynamic, TASKS)
    for task in TASKS:
        assert torch.allclose(slots["losses"][task], gathered["losses"][task], atol=1e-5), task
        assert slots["losses"][task] > 0


def test_opaque_layer_norm_matches_layer_norm_forward_and_backward():
    torch.manual_seed(0)
    plain = nn.LayerNorm(16, eps=1e-12)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    opaque = copy.deepcopy(plain)
    assert make_layer_norms_opaque(opaque) == 1 and type(opaque) is OpaqueLayerNorm
    x = torch.randn(3, 5, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    grad = torch.randn(3, 5, 16)
    plain(x).backward(grad)
    out = opaque(x2)
    out.backward(grad)
    assert torch.allclose(out, plain(x), atol=1e-6)
    assert torch.allclose(x2.grad, x.grad, atol=1e-5)
    assert torch.allclose(opaque.weight.grad, plain.weight.grad, atol=1e-5)
    assert torch.allclose(opaque.bias.grad, plain.bias.grad, atol=1e-5)
    assert opaque(x.detach().bfloat16()).dtype == torch.float32, "computed in float32, as autocast runs LayerNorm"
    opaque.keep_dtype = True  # the benchmark's bf16 residual stream: bf16 in, bf16 out, float32 statistics
    x16 = x.detach().bfloat16().requires_grad_(True)
    half = opaque(x16)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), plain(x.detach().bfloat16().float()), atol=0.05)
    opaque.zero_grad()
    half.backward(grad.bfloat16())  # gradients flow back through the bf16 op: float32 for the float32 weights
    assert x16.grad.dtype == torch.bfloat16 and opaque.weight.grad.dtype == torch.float32
    assert torch.allclose(opaque.weight.grad, plain.weight.grad, atol=0.1, rtol=0.05)
    assert torch.allclose(x16.grad.float(), x.grad, atol=0.1, rtol=0.05)
    assert make_layer_norms_plain(opaque) == 1 and type(opaque) is nn.LayerNorm


def assert_same_step(reference: ImageBert, other: ImageBert) -> None:
    """One pretraining step of both models on the same padded batch: the same loss and gradients."""
    config = reference.config
    batch = random_batch(config, size=8, seed=2)
    batch["image_keys"] = torch.arange(8)
    prepared = prepare_pretrain_batch(batch, TASKS, EXACT, config, IDS, torch.Generator().manual_seed(3))
    _, loss_reference = reference(prepared, TASKS)
    _, loss_other = other(prepared, TASKS)
    loss_reference.backward()
    loss_other.backward()
    assert torch.allclose(loss_other, loss_reference, atol=1e-5)
    grads = dict(reference.named_parameters())
    for name, parameter in other.named_parameters():
        assert torch.allclose(parameter.grad, grads[name].grad, atol=1e-5), name


def test_compiled_whole_model_step_matches_eager():
    """compile_scope model: one graph for forward + losses (opaque LayerNorms), same loss and gradients."""
    config = tiny_config()
    config.dropout = config.attention_dropout = 0.0  # so both runs compute the same thing
    torch.manual_seed(0)
    eager = ImageBert(config)
    compiled = copy.deepcopy(eager)
    compiled.compile_model(opaque_layer_norm=True, dynamic=False)
    assert_same_step(eager, compiled)
    assert any(type(m) is OpaqueLayerNorm for m in compiled.modules())
    compiled.drop_compiled()
    assert not any(type(m) is OpaqueLayerNorm for m in compiled.modules())
    assert "_compiled_forward" not in compiled.__dict__


def _config(**top):
    stage = {"name": "s1", "datasets": [{"regions": "/r", "captions": "/c"}], "steps": 1}
    return train_config_from_dict({"pretrain": [stage], **top})


def test_compile_scope_follows_the_masking():
    assert resolved_compile_scope(_config()) == "trunk"
    assert resolved_compile_scope(_config(masking="exact")) == "model"
    assert resolved_compile_scope(_config(masking="exact", compile_scope="trunk")) == "trunk"
    with pytest.raises(ConfigError, match="masking: exact"):
        _config(compile=True, compile_scope="model")
    with pytest.raises(ConfigError, match="masking"):
        _config(masking="sometimes")
