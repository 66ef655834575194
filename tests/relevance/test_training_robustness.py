"""Training that does not hang on accidents of the crawl: a feature constant in training, the row order, the port
and scheme the site was served on, a symlinked or ``clip:``-named model folder, a config edited out of range, and
punctuation among the kana."""
from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from filters.relevance import features as F
from filters.relevance import load
from filters.relevance.config import TrainConfig
from filters.relevance.train import train
from model.relevance import read_config
from tests.relevance.conftest import ROOT, save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs

#: The smallest training that still runs every step of the recipe (a few seconds).
TINY = dict(epochs=2, members=1, image_size=16, batch_size=16)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """48 pairs on 12 pages, every image 48 px high (and 48 to 66 wide): height is constant in training."""
    return make_pairs(12, seed=1, size=48)


def _weights_hash(folder: str) -> str:
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, "model.safetensors"))
    return hashlib.sha1(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()


def _trained(rows_or_path, folder: str) -> tuple[str, float]:
    """(hash of the weights, threshold) of a tiny model trained into ``folder``."""
    summary = train(rows_or_path, folder, TrainConfig(**TINY))
    return _weights_hash(folder), summary["threshold"]


def test_a_feature_constant_in_training_does_not_swing_the_score(tmp_path, rows):
    """Every training image is 48 px high: its spread was clamped to 1e-3, so a 24 px image at scoring was a
    standardised height of -700 on weights that never learnt from height, and the scores swung across the cut."""
    folder = str(tmp_path / "m")
    train(rows, folder, TrainConfig(**TINY))
    scorer = load(folder)
    height = len(F.TEXT_FEATURES) + F.IMAGE_FEATURES.index("log_height")
    assert scorer.model.feature_std[height].item() == 1.0  # centred, not scaled
    prepared = [scorer.prepare(r)[0] for r in make_pairs(6, seed=2, size=48)]
    image, tokens, features = (torch.stack([p[k] for p in prepared]) for k in ("image", "tokens", "features"))
    halved = features.clone()
    halved[:, height] -= np.log(2)  # only the height feature changes: the image reported half as high
    with torch.no_grad():
        change = (scorer.model(image, tokens, features) - scorer.model(image, tokens, halved)).abs()
    assert change.max() < 0.05, change.max()
    config = read_config(folder)
    assert config["model"]["feature_clip"] == 10 and config["tokenizer"] == "unicode-v3"  # what a model trained now is


def test_standardised_features_are_clipped_in_new_models_and_not_in_older_ones(tmp_path):
    """A value far beyond anything training saw counts as +-10 standard deviations in a model trained now; a model
    saved before the setting (no ``feature_clip`` in its config.json) scores exactly as it did."""
    folder = save_tiny_model(str(tmp_path / "m"))
    cos = torch.tensor([0.3, 0.3])
    at_clip, beyond = torch.zeros(2, 13), torch.zeros(2, 13)
    at_clip[:, 7], beyond[:, 7] = 10.0, 1e4  # feature_mean 0, feature_std 1 in an untrained model
    model = load(folder).model
    assert model.config.feature_clip == 10
    torch.nn.init.normal_(model.head[2].weight)  # the untrained head ignores its features
    torch.testing.assert_close(model.head_logit(cos, beyond), model.head_logit(cos, at_clip))

    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    del config["model"]["feature_clip"]
    with open(path, "w") as f:
        json.dump(config, f)
    old = load(folder).model
    old.load_state_dict(model.state_dict())
    assert old.config.feature_clip == 0
    x = beyond  # the formula before the setting: standardised, never clipped
    expected = old.cos_weight * cos + old.bias + old.head(torch.cat([cos.unsqueeze(-1), x], -1)).squeeze(-1)
    torch.testing.assert_close(old.head_logit(cos, beyond), expected)
    assert not torch.allclose(old.head_logit(cos, beyond), model.head_logit(cos, beyond))


def test_a_feature_clip_out_of_range_is_a_config_error(tmp_path):
    folder = save_tiny_model(str(tmp_path / "m"))
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["model"]["feature_clip"] = -1
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"config\.json: model\.feature_clip must be a whole number of 0 or more"):
        read_config(folder)


def _http_twins(rows: list[dict]) -> list[dict]:
    """The first 24 pages' pairs again, found on the http page too (another pair id, the same content)."""
    return rows + [dict(r, pair_id="h" + r["pair_id"], page_url=r["page_url"].replace("https:", "http:"))
                   for r in rows[:24]]


def test_row_order_does_not_change_the_model(tmp_path, rows):
    """Pairs of one content (a page served by http and https) kept their input order: another model."""
    crawled = _http_twins(rows)
    shuffled = list(crawled)
    random.Random(1).shuffle(shuffled)
    assert _trained(crawled, str(tmp_path / "a")) == _trained(shuffled, str(tmp_path / "b"))


def test_the_port_the_site_was_served_on_does_not_change_the_model(tmp_path, rows):
    """The same crawl served on another port, as a dataset: pair ids hash the URLs, so the rows come in another
    order; the weights and threshold are the same."""

    def served_on(port: str) -> str:
        out = []
        for r in _http_twins(rows):
            r = {k: v for k, v in r.items() if k != "is_match"}
            r["page_url"] = r["page_url"].replace("site.test", "site.test" + port)
            r["image_url"] = r["image_url"].replace("site.test", "site.test" + port)
            r["pair_id"] = hashlib.sha1((r["page_url"] + r["image_url"]).encode()).hexdigest()
            out.append(r)
        folder = tmp_path / f"pairs{port.strip(':')}"
        folder.mkdir()
        return write_pairs(out, str(folder))

    assert _trained(served_on(""), str(tmp_path / "a")) == _trained(served_on(":8080"), str(tmp_path / "b"))


def test_overwrite_through_a_link_replaces_the_linked_folder_and_keeps_the_link(tmp_path, rows):
    """``--out models/current`` linking to ``v1``: the link became a folder, ``v1`` kept the old weights, and a
    dangling ``.current.saving-*.previous`` link was left."""
    save_tiny_model(str(tmp_path / "v1"))
    os.symlink("v1", tmp_path / "current")
    train(rows, str(tmp_path / "current"), TrainConfig(**TINY), overwrite=True)
    assert os.readlink(tmp_path / "current") == "v1"
    assert sorted(os.listdir(tmp_path)) == ["current", "v1"]  # nothing left beside them
    assert sorted(os.listdir(tmp_path / "v1")) == ["config.json", "model.safetensors"]
    assert "training" in read_config(str(tmp_path / "v1"))  # the trained model, not the tiny one


def test_out_named_like_a_clip_spec_is_refused_before_training(tmp_path, rows, monkeypatch):
    """A model saved as ``clip:run1`` could never be loaded: every command reads the name as a CLIP spec."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^--out clip:run1: a name beginning with 'clip:' reads as a CLIP"):
        train(rows, "clip:run1", TrainConfig(**TINY))
    assert os.listdir(tmp_path) == []
    write_pairs(rows, str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "lait", "relevance", "train", "--input", str(tmp_path), "--out",
                           "clip:run1", "--epochs", "1", "--members", "1"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--out clip:run1: a name beginning with" in done.stderr
    assert not os.path.exists(tmp_path / "clip:run1")


def test_a_threshold_beyond_a_float_is_a_config_error(tmp_path):
    """10**400 is valid JSON, and math.isfinite raised OverflowError on it: a traceback, not the config error."""
    folder = save_tiny_model(str(tmp_path / "m"))
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["threshold"] = 10 ** 400
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"config\.json: no numeric 'threshold' \(got 1000"):
        read_config(folder)


@pytest.mark.parametrize("caption, v2, v3", [
    ("ロンドン・パリ", ["ロ", "ン", "ド", "ン", "・", "パ", "リ"], ["ロ", "ン", "ド", "ン", "パ", "リ"]),
    ("・・・", ["・", "・", "・"], []),
    ("゠", ["゠"], []),
    ("北京的 café", ["北", "京", "的", "café"], ["北", "京", "的", "café"]),
])
def test_kana_punctuation_is_no_word_in_the_new_tokenizer_only(caption, v2, v3):
    """U+30FB KATAKANA MIDDLE DOT and U+30A0 are punctuation in the Katakana block: words in unicode-v2, which
    keeps reading them so (its models score as they did), and not in unicode-v3, the tokenizer trained now."""
    assert F.words(caption, "unicode-v2") == v2
    assert F.words(caption, "unicode-v3") == v3
    assert F.TOKENIZER == "unicode-v3"


def test_punctuation_only_caption_is_boilerplate_in_the_new_tokenizer():
    """"・・・" had three words and a boilerplate score of 0; it has none, like "...", and scores 1."""
    named = dict(zip(F.TEXT_FEATURES, F.text_features("・・・", frozenset(), "unicode-v3")))
    assert named["n_words"] == 0 and named["boilerplate"] == 1.0
    assert F.text_features("・・・", frozenset(), "unicode-v3").tolist() == F.text_features("...", frozenset()).tolist()
    assert dict(zip(F.TEXT_FEATURES, F.text_features("・・・", frozenset(), "unicode-v2")))["boilerplate"] == 0.0


def test_a_model_saved_with_unicode_v2_reads_captions_as_before(tmp_path):
    """The scorer feeds a unicode-v2 model the v2 words, middle dot included; a model trained now names v3."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    folder = str(tmp_path / "v2")
    save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64)),
               folder, {"threshold": 0.5, "vocabulary": [], "tokenizer": "unicode-v2"})
    scorer = load(folder)
    example, _ = scorer.prepare({"caption": "ロンドン・パリ", "image_bytes": None})
    assert example["tokens"].tolist() == F.subword_ids("ロンドン・パリ", 64, scorer.arch.max_tokens, "unicode-v2").tolist()
    assert example["tokens"].tolist() != F.subword_ids("ロンドン・パリ", 64, scorer.arch.max_tokens, "unicode-v3").tolist()
    assert example["features"][0].item() == 7  # n_words, "・" included
