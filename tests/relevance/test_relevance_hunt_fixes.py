"""`lait relevance train|eval` and the model folder: empty paths, config sizes too large to build, captions the model
reads alike, a training whose scores collapsed, and the pairs --max-pairs leaves out."""
import json

import pytest

from filters.relevance.config import MAX_IMAGE_SIZE, TrainConfig
from lait import cli
from model.relevance import read_config
from tests.relevance.conftest import edited_model, save_tiny_model, write_pairs
from tests.relevance.scenes import make_pairs


@pytest.mark.parametrize("argv,message", [
    (["train", "--input", "", "--out", "{tmp}/m"], "--input '' is empty; give "),
    (["train", "--input", " \t", "--out", "{tmp}/m"], "--input ' \\t' is empty; give "),
    (["train", "--input", "{tmp}/site", "--out", ""], "--out '' is empty; give "),
    (["eval", "--model", "", "--input", "{tmp}/site"], "--model '' is empty; give "),
    (["eval", "--model", "{tmp}/tiny", "--input", " "], "--input ' ' is empty; give "),
    (["eval", "--model", "{tmp}/tiny", "--input", "{tmp}/site", "--json-out", ""], "--json-out '' is empty; give "),
])
def test_an_empty_path_is_refused_before_anything_is_read(tmp_path, monkeypatch, capsys, argv, message):
    """An unset variable (`--input "$PAIRS"`) read every Parquet dataset under the current folder, recursively,
    and trained (or evaluated) on it, exit 0."""
    write_pairs(make_pairs(2, seed=5, size=32), str(tmp_path / "site" / "pairs"), labelled=True)
    save_tiny_model(str(tmp_path / "tiny"))
    monkeypatch.chdir(tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert cli.main(["relevance", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"lait relevance {argv[0]}: error: {message}") and captured.err.count("\n") == 1
    assert captured.out == "" and not (tmp_path / "m").exists()


@pytest.mark.parametrize("edit,message", [
    ({"model": {"head_hidden": 10**14}}, "model.head_hidden must be a whole number of 1 or more and at most 4096, "
                                         "got 100000000000000"),
    ({"model": {"max_tokens": 10**12}}, "model.max_tokens must be a whole number of 1 or more and at most 4096"),
    ({"model": {"num_buckets": 10**21}}, "model.num_buckets must be a whole number of 2 or more and at most 16777216"),
    ({"model": {"image_size": 10**5}}, f"model.image_size must be a whole number of 1 or more and at most "
                                       f"{MAX_IMAGE_SIZE}, got 100000"),
    ({"model": {"text_dim": 10**9}}, "model.text_dim must be a whole number of 1 or more and at most 4096"),
    ({"model": {"embed_dim": 4097}}, "model.embed_dim must be a whole number of 1 or more and at most 4096"),
    ({"model": {"num_features": 10**12}}, "model.num_features must be a whole number of 1 or more and at most 4096"),
    ({"model": {"channels": [4, 10**9, 4, 4]}}, "model.channels must be a non-empty list of at most 64 whole numbers "
                                                "of 1 or more and at most 4096"),
    ({"model": {"channels": [4] * 65}}, "model.channels must be a non-empty list of at most 64 whole numbers"),
])
def test_a_size_too_large_to_build_is_a_config_error_naming_the_file(tmp_path, edit, message):
    """A hand-edited size passed the checks (minimums only) and was a RuntimeError or MemoryError traceback, a
    C++ stack, or an out-of-memory kill while the model was built."""
    folder, path = edited_model(tmp_path, edit)
    with pytest.raises(ValueError) as caught:
        read_config(folder)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text and len(text) < 300


def test_eval_of_a_model_with_a_huge_size_is_one_line(tmp_path, capsys):
    folder, path = edited_model(tmp_path, {"model": {"head_hidden": 10**14}})
    write_pairs(make_pairs(2, seed=5, size=32), str(tmp_path / "labelled"), labelled=True)
    assert cli.main(["relevance", "eval", "--model", folder, "--input", str(tmp_path / "labelled")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lait relevance eval: error: {path}: model.head_hidden") and err.count("\n") == 1


def test_the_largest_sizes_and_what_training_writes_pass_the_checks(tmp_path):
    """The caps leave room for every model `lait relevance train` writes (its --image-size goes up to
    MAX_IMAGE_SIZE); TrainConfig refuses an embed_dim the load would refuse."""
    largest = {"image_size": MAX_IMAGE_SIZE, "embed_dim": 4096, "num_buckets": 1 << 24, "max_tokens": 4096,
               "text_dim": 4096, "head_hidden": 4096, "channels": [4096] * 64}
    folder, _ = edited_model(tmp_path, {"model": largest})
    assert read_config(folder)["model"]["num_buckets"] == 1 << 24
    TrainConfig(image_size=MAX_IMAGE_SIZE, embed_dim=4096)
    with pytest.raises(ValueError, match="embed_dim must be at most 4096, got 4097"):
        TrainConfig(embed_dim=4097)


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0.\nframe #0: ..."),
                                   MemoryError("Unable to allocate 7.28 TiB")])
def test_a_model_that_cannot_be_built_is_one_line_naming_the_config(tmp_path, monkeypatch, error):
    """Within the caps, building can still fail (memory): a one-line ValueError naming config.json, not a
    traceback."""
    import model.relevance as relevance

    folder = save_tiny_model(str(tmp_path / "m"))

    def fail(_config):
        raise error

    monkeypatch.setattr(relevance, "RelevanceModel", fail)
    with pytest.raises(ValueError) as caught:
        relevance.load_model(folder)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'm' / 'config.json'}: the model cannot be built") and "\n" not in text


VARIANTS = ["A red circle", "a red circle.", "A red circle!", "A RED CIRCLE", "a  red circle"]


def test_captions_the_model_reads_alike_are_one_caption():
    """Captions that differ only in case, spacing or punctuation are the same words to the model: their
    re-pairings were counted as negatives (as mismatches of a caption to its own image's description)."""
    from filters.relevance import features as F
    from filters.relevance.train import _prepare
    from model.relevance import RelevanceConfig

    rows = make_pairs(2, seed=5, size=32)[:6]
    for row, caption in zip(rows, VARIANTS + ["a blue square"]):
        row["caption"] = caption
    ex, _ = _prepare(rows, RelevanceConfig(image_size=32), frozenset(), F.TOKENIZER)
    assert list(ex.caption) == [0, 0, 0, 0, 0, 1]


def test_a_crawl_of_one_caption_written_several_ways_has_no_negatives(tmp_path):
    """The all-identical-captions guard did not fire for one caption written five ways, and a model trained on
    re-pairings of it against itself was saved."""
    from filters.relevance.train import train

    rows = make_pairs(10, seed=5, size=32)
    for i, row in enumerate(rows):
        row["caption"] = VARIANTS[i % len(VARIANTS)]
    with pytest.raises(ValueError, match="no negatives to set the threshold on"):
        train(rows, str(tmp_path / "m"), TrainConfig(epochs=1, members=1, image_size=32, processes=1))
    assert not (tmp_path / "m").exists()


def test_a_training_whose_scores_collapsed_to_one_value_is_refused(tmp_path, capsys):
    """--lr 1000 diverged without a NaN: every held-out score 1.0 (or 0.0), a threshold that keeps every pair,
    saved as a working model, exit 0."""
    write_pairs(make_pairs(10, seed=7, size=64), str(tmp_path / "pairs"))
    code = cli.main(["relevance", "train", "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "m"),
                     "--epochs", "1", "--members", "1", "--image-size", "32", "--batch-size", "16", "--lr", "1000"])
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar
    assert code == 2 and err.startswith("lait relevance train: error: training diverged (final loss ")
    assert "try a lower lr" in err and err.count("\n") == 1 and not (tmp_path / "m").exists()


def test_pairs_left_out_by_max_pairs_are_counted(tmp_path, capsys):
    """160 pairs and --max-pairs 30: the summary and config.json said "pairs": 30; the 130 left out were
    nowhere."""
    write_pairs(make_pairs(10, seed=7, size=32), str(tmp_path / "pairs"))  # 40 pairs
    common = ["relevance", "train", "--input", str(tmp_path / "pairs"), "--epochs", "1", "--members", "1",
              "--image-size", "32", "--batch-size", "16"]
    assert cli.main([*common, "--out", str(tmp_path / "m"), "--max-pairs", "30"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (summary["input_pairs"], summary["pairs"], summary["left_out_by_max_pairs"]) == (40, 30, 10)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert (saved["input_pairs"], saved["pairs"], saved["left_out_by_max_pairs"]) == (40, 30, 10)

    from filters.relevance.train import train

    rows = make_pairs(10, seed=7, size=32)
    whole = train(rows, str(tmp_path / "all"), TrainConfig(epochs=1, members=1, image_size=32, batch_size=16,
                                                           processes=1))
    assert (whole["input_pairs"], whole["pairs"], whole["left_out_by_max_pairs"]) == (40, 40, 0)


def test_read_pairs_and_count_reports_the_input_rows(tmp_path):
    from filters.relevance.data import read_pairs, read_pairs_and_count

    write_pairs(make_pairs(10, seed=7, size=32), str(tmp_path / "pairs"))
    rows, total = read_pairs_and_count(str(tmp_path / "pairs"), limit=30)
    assert total == 40 and len(rows) == 30 and rows == read_pairs(str(tmp_path / "pairs"), limit=30)
