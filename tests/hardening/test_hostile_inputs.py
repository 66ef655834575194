"""Malformed images and bad Parquet through the real `lait filter` and `lait features` CLIs: every
record leaves as output or as a counted reject, bad files give a clear error, never a traceback."""
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import schemas
from lait import cli
from model.detectors import demo
from tests.features.scenes import CLASS_NAMES, encode, make_scene
from tests.hardening.hostile_site import png_header_only, with_exif_garbage

SMALL_DETECTOR = {"min_size": 64, "max_size": 96, "channels": [8, 8, 16, 16, 32, 32]}


def malformed_images() -> dict[str, bytes]:
    """Name -> bytes of every malformed kind, plus two good images."""
    good = encode(make_scene(1, (128, 96))[0], "JPEG", quality=90)
    return {
        "good": good,
        "good_png": encode(make_scene(2, (128, 96))[0], "PNG"),
        "exif_garbage": with_exif_garbage(encode(make_scene(3, (128, 96))[0], "JPEG", quality=90)),
        "truncated": good[: len(good) // 3],
        "wrong_magic": b"\x00\x01\x02\x03" + good[4:],
        "html": b"<!DOCTYPE html><html><body><p>a web page served as an image</p></body></html>" * 20,
        "zero_bytes": b"",
        "bomb_header": png_header_only(200_000, 200_000),
        "bomb_warning_range": png_header_only(10_000, 10_000),  # above Pillow's limit, under twice it
    }


def digest(data: bytes, name: str) -> str:
    return hashlib.sha256(data).hexdigest() if data else hashlib.sha256(name.encode()).hexdigest()


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "demo.safetensors"
    return demo.save(demo.build(SMALL_DETECTOR, CLASS_NAMES), str(path))


def test_filter_rejects_every_malformed_image_and_keeps_the_good_ones(tmp_path, capsys):
    rows = []
    for name, data in malformed_images().items():
        rows.append({"candidate_id": f"c-{name}", "image_id": digest(data, name), "page_url": f"http://h.test/{name}",
                     "image_url": f"http://h.test/{name}.jpg", "alt": f"A photo of a red kitchen table {name}",
                     "page_lang": "en", "image_bytes": data, "num_bytes": len(data), "source": "crawl"})
    schemas.write_table(schemas.to_table(rows, "candidates"), str(tmp_path / "crawl/candidates/part-00000.parquet"),
                        "candidates")
    # In-process: an exception escaping the command fails the test as a traceback would.
    status = cli.main(["filter", "--input", str(tmp_path / "crawl"), "--output", str(tmp_path / "filter"),
                       "--min-side", "64", "--min-bytes", "0", "--vocab", "none", "--max-images-per-caption", "0",
                       "--phash-distance", "-1"])
    assert status == 0, capsys.readouterr().err[-3000:]
    stats = json.loads((tmp_path / "filter/stats.json").read_text())
    assert stats["in"] == len(rows) == stats["kept"] + stats["rejected"]
    kept = {r["candidate_id"] for r in schemas.read_table(str(tmp_path / "filter/pairs"), "pairs").to_pylist()}
    assert kept == {"c-good", "c-good_png", "c-exif_garbage"}
    rejected = {r["candidate_id"]: r["reason"] for r in
                schemas.read_table(str(tmp_path / "filter/rejected"), "rejected").to_pylist()}
    assert set(rejected) == {r["candidate_id"] for r in rows} - kept
    assert rejected == {"c-truncated": "image_corrupt", "c-wrong_magic": "image_corrupt", "c-html": "image_corrupt",
                        "c-zero_bytes": "missing_image", "c-bomb_header": "image_corrupt",
                        "c-bomb_warning_range": "image_corrupt"}


def test_features_rejects_every_malformed_image_with_a_reason(tmp_path, detector_weights, capsys):
    rows = [{"pair_id": f"p-{name}", "image_id": digest(data, name), "caption": f"caption {name}", "image_bytes": data}
            for name, data in malformed_images().items()]
    schemas.write_table(schemas.to_table(rows, "pairs"), str(tmp_path / "filter/pairs/part-00000.parquet"), "pairs")
    status = cli.main(["features", "--input", str(tmp_path / "filter"), "--output", str(tmp_path / "features"),
                       "--detector", "demo", "--weights", detector_weights, "--num-workers", "0", "--min-boxes", "2",
                       "--max-boxes", "4", "--no-progress"])
    assert status == 0, capsys.readouterr().err[-3000:]
    stats = json.loads((tmp_path / "features/stats.json").read_text())
    assert stats["in"] == len(rows) == stats["kept"] + stats["rejected"]
    kept = {r["image_id"] for r in schemas.read_table(str(tmp_path / "features/regions"), "regions").to_pylist()}
    by_name = {name: digest(data, name) for name, data in malformed_images().items()}
    assert {by_name["good"], by_name["good_png"], by_name["exif_garbage"]} <= kept | {
        r["image_id"] for r in schemas.read_table(str(tmp_path / "features/rejected"), "rejected").to_pylist()
        if r["reason"] == "no_regions"}
    rejected = {r["image_id"]: r["reason"] for r in
                schemas.read_table(str(tmp_path / "features/rejected"), "rejected").to_pylist()}
    for name in ("truncated", "wrong_magic", "html", "zero_bytes", "bomb_header", "bomb_warning_range"):
        assert rejected.get(by_name[name]) in {"image_missing", "image_empty", "image_undecodable", "image_too_large"}, (name, rejected)


def _good_candidates_table() -> pa.Table:
    data = malformed_images()["good"]
    return schemas.to_table([{"candidate_id": "c1", "image_id": digest(data, "g"), "page_url": "http://h.test/",
                              "image_url": "http://h.test/a.jpg", "alt": "A photo of a red table", "image_bytes": data,
                              "source": "crawl"}], "candidates")


def bad_parquet_files(folder) -> dict[str, str]:
    """Name -> a dataset folder holding one bad Parquet file of that kind."""
    table = _good_candidates_table()
    cases = {}
    for name in ("missing_column", "wrong_type", "empty_file", "truncated_file", "not_parquet"):
        os.makedirs(folder / name / "candidates")
        cases[name] = str(folder / name / "candidates" / "part-00000.parquet")
    pq.write_table(table.drop_columns(["image_bytes"]), cases["missing_column"])
    pq.write_table(table.set_column(table.schema.get_field_index("image_id"), "image_id", pa.array([12345])),
                   cases["wrong_type"])
    open(cases["empty_file"], "wb").close()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with open(cases["truncated_file"], "wb") as f:
        f.write(buffer.getvalue()[: buffer.tell() // 2])
    with open(cases["not_parquet"], "wb") as f:
        f.write(b"<html>an error page saved as parquet</html>")
    return {name: os.path.dirname(os.path.dirname(path)) for name, path in cases.items()}


@pytest.mark.parametrize("stage", ["filter", "features"])
def test_bad_parquet_input_is_a_clear_error_not_a_traceback(tmp_path, stage, detector_weights, capsys):
    # In-process (`lait.cli.main`), so an exception escaping the command fails the test as a traceback would.
    for name, folder in bad_parquet_files(tmp_path / "in").items():
        out = str(tmp_path / f"out-{name}")
        extra = ["--detector", "demo", "--weights", detector_weights, "--num-workers", "0", "--no-progress"] \
            if stage == "features" else []
        status = cli.main([stage, "--input", folder, "--output", out, *extra])
        err = capsys.readouterr().err
        assert status != 0, name
        # The message names the file (or the column) so a user can find what is wrong.
        assert "part-00000.parquet" in err or "image_id" in err or "image_bytes" in err, (name, err[-2000:])
        assert not os.path.exists(os.path.join(out, "stats.json")), name


def test_features_beam_form_checks_bad_parquet_before_the_pipeline_starts(tmp_path, detector_weights):
    from pipeline import features

    for name, folder in bad_parquet_files(tmp_path / "in").items():
        out = str(tmp_path / f"out-{name}")
        with pytest.raises(ValueError) as caught:
            features.run(["--input", folder, "--output", out, "--detector", "demo", "--weights", detector_weights,
                          "--runner", "DirectRunner"])
        message = str(caught.value)
        assert "part-00000.parquet" in message, (name, message)
        assert not os.path.exists(os.path.join(out, "stats.json")), name
