"""The fused residual + dropout + LayerNorm kernels, run on the CPU by Triton's interpreter.

Collected only when ``TRITON_INTERPRET=1`` was set before Triton was imported, which is why
``test_fused_norm.py`` runs this file in its own pytest process; the name keeps the main run from
collecting it.
"""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from model import fused_norm, triton_support  # noqa: E402

ROWS, HIDDEN = 13, 96  # a hidden size below a power of two, so the kernels' column masks matter
# (13 rows: the backward's four programs stride over them unevenly.) The interpreter runs every program of a
# launch in Python, milliseconds a row, so the model-level checks below use the smallest batches that still
# have padding, masked items and negatives: their cost is rows x launches.


def _norm(hidden: int = HIDDEN, seed: int = 0) -> nn.LayerNorm:
    torch.manual_seed(seed)
    norm = nn.LayerNorm(hidden, eps=1e-12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    return norm


def _inputs(h_dtype=torch.float32, seed: int = 1, rows: int = ROWS):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, HIDDEN, generator=generator).to(h_dtype)
    residual = 3 * torch.randn(rows, HIDDEN, generator=generator) + 1
    return h, residual


def test_interpreter_is_on():
    assert triton_support.INTERPRETED and fused_norm.kernels_available(torch.zeros(1))


def test_forward_without_dropout_is_the_layer_norm_of_the_sum():
    norm = _norm()
    h, residual = _inputs()
    out, low = fused_norm.add_dropout_layer_norm(h, residual, norm, p=0.1, training=False)
    expected = F.layer_norm(residual + h, (HIDDEN,), norm.weight, norm.bias, norm.eps)
    assert out.dtype == torch.float32 and low is out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bf16_input_gives_float32_output_and_its_bf16_copy():
    norm = _norm()
    h, residual = _inputs(torch.bfloat16)
    out, low = fused_norm.add_dropout_layer_norm(h, residual, norm, p=0.0, training=True)
    expected = F.layer_norm(residual + h.float(), (HIDDEN,), norm.weight, norm.bias, norm.eps)
    assert out.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # within one bf16 step of the float32 values (the interpreter truncates where a GPU rounds to nearest)
    torch.testing.assert_close(low.float(), out, rtol=2 ** -7, atol=1e-6)


def test_dropout_draws_a_seeded_mask_and_scales_the_kept():
    p = 0.3
    norm = _norm()
    h, residual = _inputs()
    torch.manual_seed(7)
    out, _ = fused_norm.add_dropout_layer_norm(h, residual, norm, p=p, training=True)
    torch.manual_seed(7)  # the wrapper draws its seed from torch's generator: same state, same seed, same mask
    seed = torch.randint(0, 2 ** 31 - 1, (1,))
    keep = fused_norm.dropout_keep_mask(seed, (ROWS, HIDDEN), p)
    expected = F.layer_norm(residual + h * keep / (1 - p), (HIDDEN,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert 0.55 < keep.float().mean().item() < 0.85  # 1,248 draws around 0.7
    torch.manual_seed(8)
    other, _ = fused_norm.add_dropout_layer_norm(h, residual, norm, p=p, training=True)
    assert not torch.allclose(other, out)  # another generator state, another mask


@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_backward_matches_autograd_of_the_composition(h_dtype, p):
    norm = _norm()
    reference_norm = _norm()
    h, residual = _inputs(h_dtype)
    generator = torch.Generator().manual_seed(3)
    upstream = torch.randn(ROWS, HIDDEN, generator=generator)
    upstream_low = torch.randn(ROWS, HIDDEN, generator=generator)

    h1, r1 = h.clone().requires_grad_(), residual.clone().requires_grad_()
    torch.manual_seed(11)
    out, low = fused_norm.add_dropout_layer_norm(h1, r1, norm, p=p, training=True)
    loss = (out * upstream).sum() + ((low.float() * upstream_low).sum() if low is not out else 0)
    loss.backward()

    torch.manual_seed(11)
    seed = torch.randint(0, 2 ** 31 - 1, (1,))
    keep = fused_norm.dropout_keep_mask(seed, (ROWS, HIDDEN), p) if p else torch.ones(ROWS, HIDDEN, dtype=torch.bool)
    h2, r2 = h.clone().float().requires_grad_(), residual.clone().requires_grad_()
    expected = reference_norm(r2 + h2 * keep / (1 - p))
    # the bf16 copy's gradient arrives in bf16, as it does through the composition's own cast
    reference_loss = (expected * upstream).sum() + ((expected.to(h_dtype).float() * upstream_low).sum()
                                                   if low is not out else 0)
    reference_loss.backward()

    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-4, atol=1e-4)
    assert h1.grad.dtype == h_dtype
    torch.testing.assert_close(h1.grad.float(), h2.grad, rtol=2e-2 if h_dtype == torch.bfloat16 else 1e-4, atol=1e-3)
    torch.testing.assert_close(norm.weight.grad, reference_norm.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad, reference_norm.bias.grad, rtol=1e-4, atol=1e-4)
    if p:
        assert torch.all(h1.grad[~keep] == 0)  # a dropped element passes no gradient


def test_operator_registration_passes_opcheck():
    norm = _norm()
    h, residual = _inputs(torch.bfloat16, rows=3)  # opcheck runs the op a dozen times: the registration, not the rows
    seed = torch.tensor([5])
    args = (h.requires_grad_(), residual.requires_grad_(), norm.weight, norm.bias, seed, 0.2, 1e-12)
    torch.library.opcheck(torch.ops.lait.add_dropout_layer_norm.default, args)


def test_imagebert_with_fused_steps_computes_the_same_encoder_and_gradients_eager_and_compiled():
    import copy

    from imagebert_testlib import random_batch, tiny_config

    from model.imagebert import ImageBert

    config = tiny_config(hidden_size=HIDDEN, num_heads=4)  # dropout 0: both ways are the same function
    torch.manual_seed(0)
    plain = ImageBert(config).train()
    fused = copy.deepcopy(plain)
    fused.fused_norm = True
    batch = random_batch(config, size=2, text_len=5, regions=3)
    outputs = []
    for model in (plain, fused):
        sequence, pooled = model.encode(batch)
        (sequence.square().mean() + pooled.sum()).backward()
        outputs.append(sequence)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    grads = {name: p.grad for name, p in plain.named_parameters() if p.grad is not None}
    fused_grads = {name: p.grad for name, p in fused.named_parameters() if p.grad is not None}
    assert grads.keys() == fused_grads.keys() and any("ffn_norm" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)

    compiled = copy.deepcopy(fused)
    compiled.zero_grad()
    compiled.compile_trunk(opaque_layer_norm=True, dynamic=False)  # the op and its backward inside a compiled graph
    sequence, pooled = compiled.encode(batch)
    (sequence.square().mean() + pooled.sum()).backward()
    torch.testing.assert_close(sequence, outputs[0], rtol=1e-5, atol=1e-5)
    for name, parameter in compiled.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-4, atol=1e-5, msg=name)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the residual stream float32, matmuls bf16
        plain_scores = plain.eval()(batch)[0]["scores"]
        fused_scores = fused.eval()(batch)[0]["scores"]
    torch.testing.assert_close(fused_scores.float(), plain_scores.float(), rtol=0.05, atol=0.05)


def test_the_whole_step_compiled_with_fused_steps_and_slot_rows_gives_the_plain_losses():
    """``model+atenln+fusedln`` as ``lait train`` runs it: exact masking, the whole forward and losses compiled,
    the last layer on [CLS] + the masked slots, through the fused op."""
    import copy
    from types import SimpleNamespace

    from imagebert_testlib import random_batch, tiny_config

    from model.imagebert import ImageBert
    from model.tasks import prepare_pretrain_batch

    config = tiny_config(hidden_size=HIDDEN, num_heads=4)
    tasks = {"mlm": 1.0, "moc": 1.0, "mrfr": 1.0, "itm": 1.0}
    exact = SimpleNamespace(mlm_prob=0.15, region_mask_prob=0.15, region_zero_prob=0.9, itm_neg_prob=0.5,
                            masking="exact")
    ids = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "first_regular": 5}
    batch = prepare_pretrain_batch(random_batch(config, size=4, text_len=8, regions=4, seed=2), tasks, exact, config,
                                   ids, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    plain = ImageBert(config).train()
    fused = copy.deepcopy(plain)
    fused.fused_norm = True
    fused.compile_model(opaque_layer_norm=True, dynamic=False)
    results = []
    for model in (plain, fused):
        outputs, loss = model(batch, tasks)
        loss.backward()
        results.append(outputs["losses"])
    for task in tasks:
        torch.testing.assert_close(results[1][task], results[0][task], rtol=1e-5, atol=1e-5)
    for (name, reference), (_, parameter) in zip(plain.named_parameters(), fused.named_parameters()):
        if reference.grad is not None:
            torch.testing.assert_close(parameter.grad, reference.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_lait_train_with_fused_norm_trains_the_same_model(synth_dir, tmp_path):
    """``fused_norm: true`` in a training config runs the kernels; without dropout the losses are the plain run's."""
    import csv

    from model.config import load_config
    from model.train import train

    calls = []
    original = fused_norm._fused_forward

    def counted(*args):
        calls.append(args[0].shape)
        return original(*args)

    data = {"regions": f"{synth_dir}/regions", "captions": f"{synth_dir}/captions", "split": "train"}
    losses = {}
    for fused in (False, True):
        out_dir = str(tmp_path / f"fused-{fused}")
        config = load_config(base={
            "out_dir": out_dir, "fused_norm": fused, "tokenizer_vocab_size": 120, "log_every": 1,
            "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "dropout": 0.0,
                      "attention_dropout": 0.0, "max_text_len": 12, "max_regions": 4},
            "pretrain": [{"name": "stage1", "datasets": [data], "steps": 2, "batch_size": 2, "lr": 1e-3}],
        })
        fused_norm._fused_forward = counted if fused else original
        try:
            train(config)
        finally:
            fused_norm._fused_forward = original
        with open(f"{out_dir}/logs/stage1.csv", newline="") as handle:
            losses[fused] = [{k: float(v) for k, v in row.items() if k in ("mlm", "moc", "mrfr", "itm")}
                             for row in csv.DictReader(handle)]
    assert len(calls) == 2 * 2 * 2  # steps x layers x two sublayers, all through the kernels
    assert len(losses[True]) == 2
    for plain_row, fused_row in zip(losses[False], losses[True]):
        for task, value in plain_row.items():
            assert abs(fused_row[task] - value) <= 1e-4 * max(1.0, abs(value)), (task, plain_row, fused_row)
