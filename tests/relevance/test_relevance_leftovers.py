"""Leftovers of the relevance trainer: a training that blew up into scores of 0 and 1 (or a non-finite loss) saved
as a model, held-out words in the OOV vocabulary, and a Ctrl-C during the swap that hid the model folder."""
from __future__ import annotations

import logging
import os
import re
import shutil

import numpy as np
import pytest

import filters.relevance.train as T
from filters.relevance import features as F
from filters.relevance import load
from filters.relevance.config import TrainConfig
from lait import cli
from model.relevance import load_model, read_config
from tests.relevance.conftest import save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs

#: The smallest training that holds pages out: 40 pages of 4 pairs, 24 of them held out.
TINY = dict(epochs=1, members=1, image_size=32, batch_size=16, processes=1)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_pairs(40, seed=7, size=32)


def test_a_training_whose_scores_saturated_at_0_and_1_is_refused(tmp_path, rows, monkeypatch, capsys):
    """--lr 30 blew the loss up to thousands without a NaN: the held-out scores were exactly 0.0 and 1.0 (spread 1,
    so the collapsed-score check let it pass), 99% of them within 1e-6 of either, ranked at chance (AUC 0.53); the
    model was saved, exit 0."""
    seen = []
    scores = T._scores_with_negatives
    monkeypatch.setattr(T, "_scores_with_negatives", lambda *a, **k: seen.append(scores(*a, **k)) or seen[-1])
    write_pairs([{k: v for k, v in r.items() if k != "is_match"} for r in rows], str(tmp_path / "pairs"))
    code = cli.main(["relevance", "train", "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "m"),
                     "--epochs", "1", "--members", "1", "--image-size", "32", "--batch-size", "16", "--lr", "30"])
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar
    held_out = np.concatenate(seen[0])
    assert held_out.min() == 0.0 and held_out.max() == 1.0  # the case this is: scores of exactly 0 and 1
    assert code == 2 and err.startswith("lait relevance train: error: training diverged (final loss ")
    assert "within 1e-06 of 0 or 1" in err and "(AUC 0.5" in err and "try a lower lr" in err
    assert err.count("\n") == 1 and not (tmp_path / "m").exists()


def test_a_training_step_with_a_non_finite_loss_is_refused(tmp_path, rows, monkeypatch):
    """A loss of inf at one step, the last one finite: the model was saved as trained (only the last loss was
    looked at). A constant inf leaves the gradients, so the weights, finite: only the loss tells."""
    import torch

    calls = []
    batch_loss = T._batch_loss

    def inf_once(*args, **kwargs):
        calls.append(1)
        loss = batch_loss(*args, **kwargs)
        return loss + torch.tensor(float("inf")) if len(calls) == 2 else loss

    monkeypatch.setattr(T, "_batch_loss", inf_once)
    with pytest.raises(ValueError, match=r"^training diverged \(final loss inf\): a training step's loss was not "
                                         r"finite; try a lower lr$"):
        T.train(rows, str(tmp_path / "m"), TrainConfig(**TINY))
    assert len(calls) == 2  # it stopped there: the steps after it were wasted
    assert not (tmp_path / "m").exists()


def test_a_normal_training_and_a_confident_model_are_not_refused(tmp_path, rows):
    """The default lr on the same pairs trains and saves; scores of exactly 1.0 for every true pair and 0.0 for
    every re-pairing are a confident model's (AUC 1), not a diverged one's."""
    summary = T.train(rows, str(tmp_path / "m"), TrainConfig(**TINY))
    assert summary["held_out"] > 0 and (tmp_path / "m" / "model.safetensors").exists()
    assert T._saturation(np.ones(10, np.float32), np.zeros(30, np.float32)) is None
    assert T._saturation(np.r_[np.ones(5), np.zeros(5)], np.r_[np.ones(15), np.zeros(15)]) == (1.0, 0.5)


def _held_out_pages(rows: list[dict]) -> set[str]:
    """The page URLs training holds out of ``rows`` (20%, by a hash of the page)."""
    from model.relevance import RelevanceConfig

    ex, _ = T._prepare(rows, RelevanceConfig(image_size=16), frozenset())
    pages = {ex.page_keys[p] for p in np.unique(ex.page[T._held_out_mask(ex, 0.2)])}
    return {r["page_url"] for r in rows if r["page_url"].split("://", 1)[1] in pages}


def test_the_vocabulary_holds_training_words_only(tmp_path, rows):
    """The OOV vocabulary was built from every pair, held-out ones included, so a held-out caption's words were
    never out of vocabulary, as a new crawl's are."""
    held_out = _held_out_pages(rows)
    assert 0 < len(held_out) < 40
    rows = [dict(r, caption=r["caption"] + (" zebrine" if r["page_url"] in held_out else " trainword"))
            for r in rows]
    summary = T.train(rows, str(tmp_path / "m"), TrainConfig(**TINY))
    assert summary["held_out"] == 4 * len(held_out)
    vocabulary = read_config(str(tmp_path / "m"))["vocabulary"]
    assert "trainword" in vocabulary and "circle" in vocabulary
    assert "zebrine" not in vocabulary


def test_a_model_whose_vocabulary_holds_held_out_words_still_loads_and_scores(tmp_path):
    """Models saved before hold such words: they load, and their OOV rate is still measured against their list."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    folder = str(tmp_path / "old")
    save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64)),
               folder, {"threshold": 0.5, "vocabulary": ["red", "zebrine"], "tokenizer": F.TOKENIZER})
    scorer = load(folder)
    oov = F.TEXT_FEATURES.index("oov_rate")
    pair = make_pairs(1, seed=3, size=32)[0]
    example, ok = scorer.prepare(dict(pair, caption="red zebrine circle square"))
    assert ok and example["features"][oov].item() == pytest.approx(0.5)
    scores = scorer.score([pair, dict(pair, caption="zebrine")])
    assert scores.shape == (2,) and np.isfinite(scores).all()


# --- the swap of a new model into an existing folder -------------------------------------------------------------


def _tiny_pair(tmp_path) -> tuple[str, callable]:
    """An old model (threshold 0.25) in tmp_path/m, and a function saving a new one (threshold 0.75) over it."""
    from model.relevance import RelevanceConfig, RelevanceModel, save_model

    target = save_tiny_model(str(tmp_path / "m"), threshold=0.25)

    def save_new():
        save_model(RelevanceModel(RelevanceConfig(channels=(4, 4, 4, 4), text_dim=8, embed_dim=8, num_buckets=64)),
                   target, {"threshold": 0.75, "vocabulary": []})

    return target, save_new


def _rename_failing(monkeypatch, when, after: bool = False, then_all: bool = False):
    """os.rename raising KeyboardInterrupt on the first call where ``when(src, dst)`` holds: before the rename, or
    ``after`` it is done; with ``then_all``, on every call from there on too (a process killed there)."""
    real, tripped = os.rename, []

    def rename(src, dst):
        if tripped and then_all:
            raise KeyboardInterrupt
        if not tripped and when(os.fspath(src), os.fspath(dst)):
            tripped.append((src, dst))
            if after:
                real(src, dst)
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return tripped


def _left_beside(tmp_path) -> list[str]:
    return sorted(e for e in os.listdir(tmp_path) if e != "m")


@pytest.mark.parametrize("when, after", [
    (lambda src, dst: dst.endswith(".previous"), False),  # before the old model is moved aside
    (lambda src, dst: dst.endswith(".previous"), True),  # just after: the folder missing
    (lambda src, dst: ".m.saving-" in src and not src.endswith(".previous") and dst.endswith("/m"), False),
], ids=["before-moving-aside", "just-after-moving-aside", "before-moving-in"])
def test_an_interrupt_during_the_swap_leaves_the_old_model_in_place(tmp_path, monkeypatch, when, after):
    """A Ctrl-C between the rename that moved the old model aside and the one that put the new one in left the model
    folder missing, the old model hidden under .m.saving-*.previous."""
    target, save_new = _tiny_pair(tmp_path)
    tripped = _rename_failing(monkeypatch, when, after)
    with pytest.raises(KeyboardInterrupt):
        save_new()
    assert tripped
    monkeypatch.undo()
    assert load_model(target)[1]["threshold"] == 0.25  # the old model, whole
    assert _left_beside(tmp_path) == []


def test_an_interrupt_while_moving_other_files_keeps_them(tmp_path, monkeypatch):
    """Other files of the folder move into the new one first: a Ctrl-C just after one had moved deleted it with
    the new model's temporary folder."""
    target, save_new = _tiny_pair(tmp_path)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    _rename_failing(monkeypatch, lambda src, dst: src.endswith("notes.txt"), after=True)
    with pytest.raises(KeyboardInterrupt):
        save_new()
    monkeypatch.undo()
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
    assert load_model(target)[1]["threshold"] == 0.25 and _left_beside(tmp_path) == []


def test_a_save_killed_mid_swap_is_named_by_a_load_and_put_back_by_the_next_save(tmp_path, monkeypatch, caplog):
    """Killed just after the old model was moved aside (no rename works any more, so nothing is undone, and the
    temporary folder with the folder's other files stays): the folder is missing. A load names where the old model
    lies (it does not move it: a load that did broke a save going on); the next save puts it back, the folder's
    other files with it, then replaces it as usual."""
    target, save_new = _tiny_pair(tmp_path)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    _rename_failing(monkeypatch, lambda src, dst: dst.endswith(".previous"), after=True, then_all=True)
    with pytest.raises(KeyboardInterrupt):
        save_new()
    monkeypatch.undo()
    assert not os.path.exists(target)
    aside = [e for e in _left_beside(tmp_path) if e.endswith(".previous")]
    assert len(aside) == 1 and aside[0][: -len(".previous")] in _left_beside(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"left the earlier model at .*{re.escape(aside[0])}: rename it back"):
        load(target)
    assert aside[0] in _left_beside(tmp_path)  # not moved by the load
    with caplog.at_level(logging.WARNING, logger="model.relevance"):
        save_new()
    assert "put back the relevance model that an interrupted save had moved to" in caplog.text
    assert load_model(target)[1]["threshold"] == 0.75 and _left_beside(tmp_path) == []
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_a_stale_copy_of_a_finished_swap_is_never_put_back(tmp_path, monkeypatch):
    """Killed after the new model was in place, while the old copy was being removed: the user then removed the
    folder. A load brought the old copy back and scored with it; a model the user removed stays removed."""
    target, save_new = _tiny_pair(tmp_path)
    import model.relevance as relevance

    monkeypatch.setattr(relevance.shutil, "rmtree", lambda *args, **kwargs: None)  # the removal, cut short
    save_new()
    monkeypatch.undo()
    assert [e for e in _left_beside(tmp_path) if e.endswith(".previous")]
    shutil.rmtree(target)
    with pytest.raises(FileNotFoundError, match=r"not a LAIT relevance model \(no config.json\)$"):
        load(target)
    save_new()  # a new folder: the stale copy is not taken for it
    assert load_model(target)[1]["threshold"] == 0.75


def test_training_into_a_folder_a_killed_save_hid_needs_overwrite(tmp_path, monkeypatch, rows):
    """The folder is missing after a killed save: training into it without --overwrite took it for a new folder,
    and the old model stayed hidden beside it for good."""
    target, save_new = _tiny_pair(tmp_path)
    _rename_failing(monkeypatch, lambda src, dst: dst.endswith(".previous"), after=True, then_all=True)
    with pytest.raises(KeyboardInterrupt):
        save_new()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="already holds a relevance model; pass --overwrite"):
        T.train(rows, target, TrainConfig(**TINY))
    assert load_model(target)[1]["threshold"] == 0.25 and _left_beside(tmp_path) == []
