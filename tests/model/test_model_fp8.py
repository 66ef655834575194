"""Float8 scoring (``lait eval --precision fp8``): the layer's arithmetic, the swap, and recall that holds."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from imagebert_testlib import eval_split
from model.eval import evaluate, score_pairs
from model.fp8 import E4M3_MAX, Float8Linear, calibrate, encoder_linears, float8_encoder, fp8_supported


def test_float8_linear_is_close_to_the_linear_it_replaces():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    nn.init.normal_(linear.bias, std=0.5)
    x = torch.randn(3, 7, 64) * torch.logspace(-2, 1, 7)[None, :, None]  # rows of very different scale
    fp8 = Float8Linear(linear)
    with torch.no_grad():
        y, ref = fp8(x), linear(x)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    # e4m3 keeps 3 mantissa bits: a few percent per product; each row is scaled on its own, so the small
    # rows are as accurate as the large ones.
    error = (y.float() - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert float(error.max()) < 0.08
    assert fp8.weight_t.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    # the bias is applied (a layer of zeros gives the bias back)
    zero = nn.Linear(64, 48)
    nn.init.zeros_(zero.weight)
    with torch.no_grad():
        torch.testing.assert_close(Float8Linear(zero)(x).float(), zero.bias.to(torch.bfloat16).float().expand(3, 7, 48))


def test_static_input_scale_is_as_close_and_saturates_beyond_its_range():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(50, 64)
    amax = float(x.abs().max())
    static = Float8Linear(linear, input_amax=2 * amax)
    assert static.static and float(static.input_scale) == pytest.approx(2 * amax / E4M3_MAX)
    with torch.no_grad():
        y, ref = static(x), linear(x)
        dynamic = Float8Linear(linear)(x)
        error = float((y.float() - ref).norm() / ref.norm())
        assert error < 0.08  # one scale for all rows: as close as row scaling on rows of one size
        assert error < 3 * float((dynamic.float() - ref).norm() / ref.norm())
        # inputs far beyond the calibrated range saturate at e4m3's largest value: finite, not inf or NaN
        big = torch.zeros(1, 64)
        big[0, 0] = 1e6
        out = static(big)
        assert torch.isfinite(out).all()
        clipped = torch.zeros(1, 64)
        clipped[0, 0] = 2 * amax  # what the saturated input becomes
        torch.testing.assert_close(out.float(), linear(clipped).to(torch.bfloat16).float(), rtol=0.08, atol=0.05)
    assert "static input scale" in repr(static) and "row-scaled" in repr(Float8Linear(linear))
    with pytest.raises(ValueError, match="positive"):
        Float8Linear(linear, input_amax=0.0)


def test_calibrate_records_each_layers_largest_input_over_every_call():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))])
    first, second = torch.randn(4, 16), 5 * torch.randn(4, 16)

    def run():
        for x in (first, second):
            model.layers[0](x)

    seen = calibrate(model, run)
    with torch.no_grad():
        hidden = [model.layers[0][1](model.layers[0][0](x)) for x in (first, second)]
    assert seen == pytest.approx([float(torch.cat([first, second]).abs().max()),
                                  float(torch.cat(hidden).abs().max())])
    assert not model.layers[0][0]._forward_pre_hooks  # the hooks are gone afterwards
    with pytest.raises(ValueError, match="3 calibrated input maxima for 2 encoder"):
        with float8_encoder(model, [1.0, 2.0, 3.0]):
            pass


def test_float8_linear_refuses_unaligned_sizes():
    with pytest.raises(ValueError, match="multiples of 16"):
        Float8Linear(nn.Linear(40, 64))
    assert fp8_supported("cpu") and not fp8_supported("meta")


def test_swap_takes_the_encoder_linears_and_puts_them_back(tiny_model):
    places = encoder_linears(tiny_model)
    originals = [getattr(parent, name) for parent, name in places]
    assert len(originals) == 4 * tiny_model.config.num_layers  # qkv, attention out, feed-forward in and out
    with float8_encoder(tiny_model) as swapped:
        assert swapped == len(originals)
        assert all(isinstance(getattr(p, n), Float8Linear) for p, n in places)
        assert isinstance(tiny_model.pooler, nn.Linear)  # outside the encoder layers: untouched
    assert [getattr(parent, name) for parent, name in encoder_linears(tiny_model)] == originals
    with pytest.raises(RuntimeError, match="inside"):
        with float8_encoder(tiny_model):
            raise RuntimeError("inside")
    assert [getattr(parent, name) for parent, name in encoder_linears(tiny_model)] == originals


def test_fp8_scores_rank_like_full_precision_and_recall_holds(synth_dir, tiny_trained):
    model, tokenizer_json = tiny_trained
    data = eval_split(model, tokenizer_json, synth_dir)
    n_captions, n_images = data.shape
    pairs_c = np.tile(np.arange(n_captions), n_images)
    pairs_i = np.repeat(np.arange(n_images), n_captions)
    cpu = torch.device("cpu")
    full = score_pairs(model, data, pairs_c, pairs_i, 512, cpu, bf16=False)
    ranks = lambda s: np.argsort(np.argsort(s.numpy()))  # noqa: E731
    with float8_encoder(model):  # dynamic: each input row scaled on its own
        low = score_pairs(model, data, pairs_c, pairs_i, 512, cpu, bf16=True)
    spearman = np.corrcoef(ranks(full), ranks(low))[0, 1]
    assert spearman > 0.97, spearman  # 0.998 here
    assert not torch.equal(full, low)  # the float8 path really ran
    # static: scales calibrated on a tenth of the pairs, then every pair scored with them
    sample = np.random.default_rng(1).choice(len(pairs_c), len(pairs_c) // 10, replace=False)
    amax = calibrate(model, lambda: score_pairs(model, data, pairs_c[sample], pairs_i[sample], 512, cpu, bf16=True))
    assert len(amax) == len(encoder_linears(model)) and min(amax) > 0
    with float8_encoder(model, amax):
        static = score_pairs(model, data, pairs_c, pairs_i, 512, cpu, bf16=True)
    spearman = np.corrcoef(ranks(full), ranks(static))[0, 1]
    assert spearman > 0.97, spearman  # 0.996 here

    args = (model, tokenizer_json, f"{synth_dir}/regions", f"{synth_dir}/captions", "test")
    reference = evaluate(*args, batch_size=512)
    result = evaluate(*args, batch_size=512, fp8=True)
    assert result["precision"] == "fp8" and reference["precision"] == "fp32"
    for direction in ("image_retrieval", "sentence_retrieval"):
        for k in ("R@1", "R@5", "R@10"):
            assert result[direction][k] == pytest.approx(reference[direction][k], abs=0.1), (direction, k)
        assert result[direction]["R@1"] > 3 * result[direction]["chance_R@1"]
    assert all(isinstance(getattr(p, n), nn.Linear) for p, n in encoder_linears(model))
