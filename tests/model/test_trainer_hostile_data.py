"""Hostile regions and captions that `lait train` and `lait eval` used to take silently or fail on without a word:
a stray class id sizing the object-classification head, a caption of one huge word stalling the tokenizer trainer,
negative or huge top-k probabilities turning the KL loss NaN or zero, a huge box making NaN locations, invisible
captions trained on as [CLS] [SEP], and null image ids, boxes or feature vectors written by another tool."""
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from imagebert_testlib import tiny_config
from model.config import DatasetConfig
from model.data import (MAX_INFERRED_CLASSES, captions_by_image, dataset_report, decode_regions, location_vectors,
                        num_classes_of, read_region_rows, region_image_ids)
from model.tasks import dense_class_distribution


def _row(image_id, n=2, dim=4, **changes):
    row = {"image_id": image_id, "image_width": 100, "image_height": 50, "num_boxes": n,
           "boxes": [[10.0, 5.0, 60.0, 30.0]] * n, "features": [[1.0] * dim] * n, "class_ids": list(range(n)),
           "topk_class_ids": [[i, i + 1] for i in range(n)], "topk_class_probs": [[0.7, 0.3]] * n}
    row.update(changes)
    return row


def _write_foreign(path, rows, dim=4, nullable_ids=False):
    """Rows written with plain pyarrow, as another tool writes them: nothing checks their nulls."""
    schema = schemas.regions_schema(dim)
    if nullable_ids:
        schema = schema.set(0, schema.field(0).with_nullable(True))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path), row_group_size=2)
    return str(path)


def _write_captions(folder, captions):
    schemas.write_table(schemas.to_table(captions, "captions"), str(folder / "p.parquet"), "captions")
    return str(folder)


@pytest.mark.parametrize("column, stray", [("class_ids", 1_000_000), ("topk_class_ids", 2 ** 31 - 1)])
def test_a_stray_class_id_without_classes_json_is_refused_naming_the_file_and_the_id(tmp_path, column, stray):
    """One stray id set the class count: 1,000,000 made a 1M-class head (2.4 GB, 3 samples/s), 2^31 - 1 failed
    allocating 550 GB."""
    rows = [_row("a"), _row("b"), _row("c")]
    if column == "class_ids":
        rows[2]["class_ids"] = [1, stray]
    else:
        rows[2]["topk_class_ids"] = [[1, 2], [3, stray]]
    file = _write_foreign(tmp_path / "features" / "regions" / "part-00001.parquet", rows)
    _write_foreign(tmp_path / "features" / "regions" / "part-00000.parquet", [_row("d")])
    with pytest.raises(ValueError, match=f"^{re.escape(file)}: {column} holds class id {stray}, .*classes.json"):
        num_classes_of(str(tmp_path / "features" / "regions"))
    # A detector's vocabulary of up to MAX_INFERRED_CLASSES classes is still read from its ids.
    rows[2][column] = [1, MAX_INFERRED_CLASSES - 1] if column == "class_ids" else [[1, 2], [3, 1599]]
    _write_foreign(tmp_path / "features" / "regions" / "part-00001.parquet", rows)
    assert num_classes_of(str(tmp_path / "features" / "regions")) == (
        MAX_INFERRED_CLASSES if column == "class_ids" else 1600)
    # With a classes.json, the ids do not decide the count (a stray id is warned about and skipped by MOC).
    rows[2][column] = [1, stray] if column == "class_ids" else [[1, 2], [3, stray]]
    _write_foreign(tmp_path / "features" / "regions" / "part-00001.parquet", rows)
    (tmp_path / "features" / "classes.json").write_text('{"num_classes": 1600}')
    assert num_classes_of(str(tmp_path / "features" / "regions")) == 1600


def test_words_longer_than_wordpiece_reads_are_left_out_of_the_tokenizers_training(caplog):
    """A 1 MB caption without a space stalled `lait train` for over 10 minutes in the WordPiece trainer (quadratic
    in the longest word); WordPiece encodes a word past 100 characters as [UNK] anyway."""
    from model.tokenizer import _without_long_words, train_wordpiece

    normal = ["a small red circle left of a large blue square",
              "Ünïcödé 한국어 단어 and a dash-separated-word-chain", "x" * 100, "한" * 33 + " " + "é" * 99]
    assert list(_without_long_words(normal, True, [0])) == normal, "captions without a long word are left as they are"
    dropped = [0]
    assert list(_without_long_words(["Red " + "y" * 101 + ",ABC", "한" * 34], True, dropped)) == ["red , abc", ""]
    assert dropped == [2]
    with caplog.at_level(logging.WARNING, logger="model.tokenizer"):
        tokenizer = train_wordpiece(normal * 3 + ["zj" * (1 << 19)], vocab_size=200)
    learnt = [piece for piece in tokenizer.get_vocab() if "z" in piece or "j" in piece]
    assert not learnt, "nothing learnt from the long word"
    assert "1 words longer than 100 characters left out" in caplog.text
    assert tokenizer.encode("a red " + "zj" * 60).tokens == ["[CLS]", "a", "red", "[UNK]", "[SEP]"]


def test_negative_and_huge_top_k_probabilities_give_a_finite_kl_target(caplog):
    """[0.9, 0.15, -0.05] made the KL loss NaN ("lower the stage's lr"); two of 3e38 summed to inf in float32 and
    the target came out all zero (loss silently 0)."""
    ids = torch.tensor([[0, 1, 2], [3, 4, 5], [1, 2, 3]])
    probs = torch.tensor([[0.9, 0.15, -0.05], [3e38, 3e38, 0.0], [-1.0, -0.5, 0.0]])
    target = dense_class_distribution(ids, probs, 6)
    assert torch.isfinite(target).all() and (target >= 0).all()
    assert torch.allclose(target[0, :3], torch.tensor([0.9, 0.15, 0.0]) / 1.05)
    assert torch.allclose(target[1, 3:5], torch.tensor([0.5, 0.5]))
    assert target[2].sum() == 0, "no probability left: an all-zero target, which the KL loss skips"

    from model.imagebert import ImageBert

    torch.manual_seed(0)
    head = ImageBert(tiny_config(num_classes=6), moc_loss="kl").heads["moc"]
    sequence = torch.randn(1, 3 + 3, head.head[1].in_features)
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "region_loss_mask": torch.ones(1, 3, dtype=torch.bool),
             "region_classes": torch.tensor([[0, 3, 1]]), "region_topk_ids": ids[None],
             "region_topk_probs": probs[None]}
    with torch.no_grad():
        loss = head.loss(sequence, None, dict(batch, region_masked=torch.tensor([[True, True, True]])))
        counted = head.loss(sequence, None, dict(batch, region_masked=torch.tensor([[True, True, False]])))
    assert torch.isfinite(loss) and float(loss) > 0 and torch.allclose(loss, counted)

    # Read from a regions file, negative probabilities are 0, with a warning.
    table = schemas.to_table([_row("a", topk_class_probs=[[0.9, -0.05], [0.6, 0.4]])], "regions", feature_dim=4)
    with caplog.at_level(logging.WARNING, logger="model.data"):
        image, = decode_regions(table, 8, 4)
    assert image.topk_probs.tolist() == [[pytest.approx(0.9), 0.0], [pytest.approx(0.6), pytest.approx(0.4)]]
    assert "1 negative topk_class_probs values set to 0" in caplog.text


@pytest.mark.parametrize("box, size, expected", [
    ([-2e38, 5, 2e38, 5], (1, 1), [0, 1, 1, 1, 0]),  # x2 - x1 overflowed float32: inf x 0 = NaN
    ([-3e38, 5, 3e38, 5], (640, 480), [0, 5 / 480, 1, 5 / 480, 0]),
    ([-3.4e38, -3.4e38, 0, 0], (None, None), [0, 0, 0, 0, 0]),
    ([700, 500, 710, 520], (640, 480), [1, 1, 1, 1, 0]),  # wholly outside the image: its area was 0.013
    ([-10, -10, -5, -5], (None, None), [0, 0, 0, 0, 0]),  # ... or 1.0 without an image size
    ([-50, 10, 50, 30], (100, 50), [0, 0.2, 0.5, 0.6, 0.5 * 0.4]),  # the part inside the image
])
def test_a_huge_or_outside_box_has_a_finite_location_and_the_clipped_boxes_area(box, size, expected):
    location = location_vectors(np.array([box], np.float32), *size)
    assert location.dtype == np.float32 and np.isfinite(location).all()
    assert np.allclose(location, [expected])


def test_captions_of_invisible_characters_only_are_blank_and_counted(tmp_path):
    """Control characters, right-to-left marks, zero-width spaces and a byte-order mark passed str.strip: trained
    and scored as [CLS] [SEP] alone, while the docs promise blank captions are left out and counted."""
    from model.eval import read_eval_captions

    invisible = ["\x00\x01\x02", "\u200f\u202e\u200e", "\u200b", "\ufeff", "\u200b \u2060\x7f", "\ue000\U0010ffff"]
    visible = ["red circle", "\U0001f600\U0001f431", "\u200bred\u200b", "\x1b[31m"]
    captions = [{"caption_id": f"c{n}", "image_id": "ab"[n % 2], "caption": text, "split": "test"}
                for n, text in enumerate(invisible + visible)]
    folder = _write_captions(tmp_path / "captions", captions)
    table = schemas.read_table(folder, "captions")
    kept = [caption for items in captions_by_image(table).values() for _, caption in items]
    assert sorted(kept) == sorted(visible)
    read = read_eval_captions(folder, "test")
    assert (read.count, read.blank) == (len(visible), len(invisible))
    regions = _write_foreign(tmp_path / "regions" / "part-00000.parquet", [_row("a"), _row("b")])
    report = dataset_report([DatasetConfig(str(tmp_path / "regions"), folder, "test")])
    assert (report["pairs"], report["blank_captions"]) == (len(visible), len(invisible)), regions


def test_a_null_image_id_in_a_regions_file_is_refused_naming_the_file(tmp_path):
    """Two nulls were "1 regions rows repeat an image_id" and an image without captions; in eval the null image
    vanished into captions_without_regions. Captions with a null id are refused; so are regions now."""
    from model.eval import EvalSet
    from model.tokenizer import train_wordpiece

    _write_foreign(tmp_path / "regions" / "part-00000.parquet", [_row("a"), _row("b")], nullable_ids=True)
    file = _write_foreign(tmp_path / "regions" / "part-00001.parquet", [_row("c"), _row(None), _row(None)],
                          nullable_ids=True)
    captions = _write_captions(tmp_path / "captions", [
        {"caption_id": f"c{n}", "image_id": image, "caption": "red circle", "split": "test"}
        for n, image in enumerate("abc")])
    message = f"^{re.escape(file)}: column 'image_id' has [12] null value"
    with pytest.raises(schemas.SchemaMismatchError, match=message):
        dataset_report([DatasetConfig(str(tmp_path / "regions"), captions, "test")])
    with pytest.raises(schemas.SchemaMismatchError, match=message):
        region_image_ids(str(tmp_path / "regions"))
    tokenizer = train_wordpiece(["red circle"] * 3, vocab_size=60).to_str()
    with pytest.raises(schemas.SchemaMismatchError, match=message):
        EvalSet(str(tmp_path / "regions"), captions, "test", tokenizer, 12, 6, 4)


@pytest.mark.parametrize("column", ["features", "boxes"])
def test_a_null_box_or_feature_vector_is_named_before_training_and_where_read(tmp_path, column):
    """A region's null vector failed mid-stage as "lait train: Expected all lists to be of size=16 but index 1 had
    size=0", naming nothing."""
    from model.eval import EvalSet
    from model.tokenizer import train_wordpiece

    bad = _row("b", 3)
    bad[column] = [bad[column][0], None, bad[column][2]]
    rows = [_row("a"), bad, _row("c")]
    file = _write_foreign(tmp_path / "regions" / "part-00000.parquet", rows)
    captions = _write_captions(tmp_path / "captions", [
        {"caption_id": f"c{n}", "image_id": image, "caption": "red circle", "split": "test"}
        for n, image in enumerate("abc")])
    message = f"^{re.escape(file)}: image b: column '{column}' holds a null entry"
    with pytest.raises(ValueError, match=message):  # the up-front check of a stage
        dataset_report([DatasetConfig(str(tmp_path / "regions"), captions, "test")])
    with pytest.raises(ValueError, match=message):  # `lait train`'s check of its eval split
        region_image_ids(str(tmp_path / "regions"))
    with pytest.raises(ValueError, match=message):  # the stream's read of a row group
        read_region_rows(file, 0, ["image_id", "boxes", "features"])
    tokenizer = train_wordpiece(["red circle"] * 3, vocab_size=60).to_str()
    with pytest.raises(ValueError, match=message):
        EvalSet(str(tmp_path / "regions"), captions, "test", tokenizer, 12, 6, 4)
    # A null value inside a vector reads (as NaN, then 0): not refused.
    inside = _row("b", 3)
    inside[column] = [inside[column][0], [None] + inside[column][1][1:], inside[column][2]]
    _write_foreign(tmp_path / "regions" / "part-00000.parquet", [_row("a"), inside, _row("c")])
    assert dataset_report([DatasetConfig(str(tmp_path / "regions"), captions, "test")])["pairs"] == 3
    assert len(region_image_ids(str(tmp_path / "regions"))) == 3
