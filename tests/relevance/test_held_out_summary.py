"""The training summary's held-out numbers are measured on held-out pages, or null when none were held out."""
import json

from lait import cli
from tests.relevance.conftest import write_pairs
from tests.relevance.scenes import make_pairs


def test_val_fraction_0_reports_no_held_out_auc(tmp_path, capsys):
    """`lait relevance train --val-fraction 0` held out 0 pairs yet reported a held_out_auc (and kept / removed
    shares): numbers computed on the training pairs. Now null, with the reason; the model config says the same."""
    write_pairs(make_pairs(12, seed=7), str(tmp_path / "pairs"))
    common = ["relevance", "train", "--input", str(tmp_path / "pairs"), "--epochs", "1", "--batch-size", "16",
              "--members", "1", "--image-size", "32"]
    assert cli.main([*common, "--out", str(tmp_path / "none"), "--val-fraction", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["held_out"] == 0 and summary["trained_on"] == 48
    for key in ("held_out_auc", "held_out_kept", "held_out_negatives_removed"):
        assert summary[key] is None, key
    assert summary["held_out_none"].startswith("nothing held out (val_fraction 0.0 held out 0 pairs, fewer than 20)")
    assert 0.0 <= summary["threshold"] <= 1.0  # still set, on the training pairs, as documented
    saved = json.loads((tmp_path / "none" / "config.json").read_text())["training"]
    assert saved["held_out_auc"] is None and saved["held_out_none"] == summary["held_out_none"]

    # Pages held out (half of 12 pages of 4 pairs, by their URLs' hash: 20 pairs): the numbers, no note.
    assert cli.main([*common, "--out", str(tmp_path / "half"), "--val-fraction", "0.5"]) == 0
    held = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert held["held_out"] >= 20 and held["trained_on"] + held["held_out"] == 48
    assert 0.0 <= held["held_out_auc"] <= 1.0 and 0.0 <= held["held_out_kept"] <= 1.0
    assert "held_out_none" not in held


def test_no_negatives_with_nothing_held_out_does_not_call_the_training_pairs_held_out(tmp_path, capsys):
    """One caption and one image repeated: no re-pairing gives a negative. With nothing held out the error named
    the training pairs "held-out pairs"."""
    pairs = make_pairs(3, seed=7)
    same = [dict(row, caption=pairs[0]["caption"], image_bytes=pairs[0]["image_bytes"]) for row in pairs]
    write_pairs(same, str(tmp_path / "pairs"))
    code = cli.main(["relevance", "train", "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "m"),
                     "--epochs", "1", "--val-fraction", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "no negatives to set the threshold on" in err, err
    assert "pairs (nothing held out: all of them)" in err and "held-out pairs" not in err
