"""The last layer computes only the rows something reads: [CLS] to score, [CLS] and the masked slots to
pretrain with exact masking. The outputs must be those of the whole sequence."""
from types import SimpleNamespace

import pytest
import torch

from model.fp8 import Float8Linear
from model.imagebert import ColumnLinear, ImageBert, Layer
from model.tasks import prepare_pretrain_batch, slot_rows
from imagebert_testlib import random_batch, tiny_config

EXACT = SimpleNamespace(mlm_prob=0.15, region_mask_prob=0.15, region_zero_prob=0.9, itm_neg_prob=0.5, masking="exact")
BERNOULLI = SimpleNamespace(**{**vars(EXACT), "masking": "bernoulli"})
IDS = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "first_regular": 5}
TASKS = {"mlm": 1.0, "moc": 1.0, "mrfr": 1.0, "itm": 1.0}


def _pair(config, **overrides):
    torch.manual_seed(0)
    rows = ImageBert(config, **overrides)
    every = ImageBert(config, **overrides)
    every.load_state_dict(rows.state_dict())
    every.last_layer_rows = False
    return rows, every


def _last_layer_inputs(model: ImageBert) -> list[tuple[int, ...]]:
    """Records the shapes the last layer's feed-forward reads while the model runs."""
    shapes = []
    model.layers[-1].ffn_in.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes


def _prepared(config, masking=EXACT, size=12, seed=7):
    batch = random_batch(config, size=size, text_len=10, regions=6, seed=seed)
    return prepare_pretrain_batch(batch, TASKS, masking, config, IDS, torch.Generator().manual_seed(1))


def test_scores_come_from_the_cls_row_alone_and_equal_the_whole_sequences():
    config = tiny_config(num_layers=3)
    rows, every = _pair(config)
    rows.eval(), every.eval()
    batch = random_batch(config, size=6, seed=2)
    shapes = _last_layer_inputs(rows)
    with torch.no_grad():
        scored = rows.score(batch)
        reference = every.score(batch)
    assert shapes == [(6, 1, config.hidden_size)], "the last layer's feed-forward ran on [CLS] only"
    torch.testing.assert_close(scored, reference, rtol=1e-5, atol=1e-5)
    assert scored.std() > 0


@pytest.mark.parametrize("moc_loss", ["ce", "kl"])
def test_pretraining_losses_and_gradients_equal_the_whole_sequences(moc_loss):
    config = tiny_config(num_layers=2)
    rows, every = _pair(config, moc_loss=moc_loss)
    prepared = _prepared(config)
    slots = 1 + prepared["mlm_positions"].shape[1] + prepared["region_positions"].shape[1]
    shapes = _last_layer_inputs(rows)
    out, loss = rows(prepared, TASKS)
    reference_out, reference_loss = every(prepared, TASKS)
    assert shapes == [(12, slots, config.hidden_size)] and slots < 16, "only [CLS] and the slots in the last layer"
    for task in TASKS:
        torch.testing.assert_close(out["losses"][task], reference_out["losses"][task], rtol=1e-5, atol=1e-6)
        assert out["losses"][task] > 0
    loss.backward()
    reference_loss.backward()
    for (name, param), (_, reference) in zip(rows.named_parameters(), every.named_parameters()):
        if reference.grad is None:
            assert param.grad is None, name
            continue
        torch.testing.assert_close(param.grad, reference.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert rows.layers[-1].ffn_in.weight.grad.abs().sum() > 0


def test_bernoulli_masking_reads_every_row():
    config = tiny_config()
    prepared = _prepared(config, BERNOULLI)
    assert "mlm_positions" not in prepared
    assert slot_rows(prepared, TASKS) is None
    assert slot_rows(prepared, {"itm": 1.0, "mlm": 0.0}).tolist() == [[0]] * 12, "ITM alone reads [CLS]"
    rows, every = _pair(config)
    rows.eval(), every.eval()
    shapes = _last_layer_inputs(rows)
    out, _ = rows(prepared, TASKS)
    reference, _ = every(prepared, TASKS)
    assert shapes[0][1] == prepared["input_ids"].shape[1] + prepared["region_mask"].shape[1]
    for task in TASKS:
        torch.testing.assert_close(out["losses"][task], reference["losses"][task])


def test_slot_rows_are_cls_then_caption_slots_then_region_slots():
    config = tiny_config()
    prepared = _prepared(config)
    rows = slot_rows(prepared, TASKS)
    text = prepared["input_ids"].shape[1]
    assert rows[:, 0].eq(0).all()
    kt = prepared["mlm_positions"].shape[1]
    assert torch.equal(rows[:, 1:1 + kt], prepared["mlm_positions"])
    assert torch.equal(rows[:, 1 + kt:], prepared["region_positions"] + text)
    only_regions = {k: v for k, v in prepared.items() if k != "mlm_positions"}
    assert slot_rows(only_regions, {"moc": 1.0, "itm": 1.0}).shape[1] == 1 + prepared["region_positions"].shape[1]
    assert slot_rows(only_regions, TASKS) is None, "MLM without slots reads every row"


def test_single_modality_embeddings_are_unchanged():
    config = tiny_config()
    rows, every = _pair(config)
    rows.eval(), every.eval()
    batch = random_batch(config, size=5, seed=4)
    with torch.no_grad():
        got = rows.single_modality_embeddings(batch, 2, 3)
        expected = every.single_modality_embeddings(batch, 2, 3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_layer_on_some_rows_gives_those_rows_of_the_whole_layer():
    config = tiny_config(dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(3)
    layer = Layer(config)
    x = torch.randn(3, 9, config.hidden_size)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., -3:] = False
    rows = torch.tensor([[0, 4, 8], [0, 0, 2], [0, 7, 1]])
    whole = layer(x, mask)
    part = layer(x, mask, rows)
    torch.testing.assert_close(part, whole.gather(1, rows.unsqueeze(-1).expand(-1, -1, config.hidden_size)))
    fused, low = layer.forward_fused(x, x, mask, rows)
    torch.testing.assert_close(fused, part)


def test_the_qkv_projection_computes_a_slice_of_its_columns_in_both_precisions():
    torch.manual_seed(0)
    linear = ColumnLinear(32, 96)
    x = torch.randn(5, 32)
    seen = []
    linear.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    torch.testing.assert_close(linear(x, columns=slice(32, 96)), linear(x)[:, 32:])
    assert seen == [(5, 32)] * 2, "hooks (float8 calibration) see the sliced calls too"
    quantised = Float8Linear(linear, input_amax=float(x.abs().max()))
    whole = quantised(x)
    part = quantised(x, columns=slice(32, 96))
    assert part.shape == (5, 64) and part.dtype == whole.dtype
    torch.testing.assert_close(part, whole[:, 32:])


def test_float8_calibration_sees_the_last_layers_inputs():
    from model.fp8 import calibrate, encoder_linears

    config = tiny_config()
    model, _ = _pair(config)
    model.eval()
    batch = random_batch(config, size=4, seed=1)
    amax = calibrate(model, lambda: model.score(batch))
    assert len(amax) == len(encoder_linears(model)) and min(amax) > 0
