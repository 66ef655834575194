"""`lait import-captions`: the checks of --out (a dataset, a finished stage's folder) and --split, the images opened
as every other stage opens them (filters.imageio), and pairs/ rows for images with a kept caption only."""
import io
import json
import os
import subprocess
import sys
import warnings

import pytest
from PIL import Image

import schemas
from imagebert_testlib import REPO
from lait import cli
from model.captions_import import CaptionRecord, ImportExistsError, import_captions


def _images(tmp_path):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(images / "a.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "b.png")
    return images


def _cli(tmp_path, out, *extra):
    (tmp_path / "t.tsv").write_text("a.jpg\ta red picture\nb.png\ta green square\n")
    return cli.main(["import-captions", str(tmp_path / "t.tsv"), "--format", "tsv", "--images",
                     str(tmp_path / "images"), "--out", str(out), *extra])


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder) for root, dirs, files in os.walk(folder)
                  for name in dirs + files)


def test_a_dataset_or_a_folder_inside_a_finished_stage_is_refused_as_out(tmp_path, capsys):
    """--out RUN/filter/pairs (a dataset) was accepted: captions/, pairs/ and rejected/ landed among its shards and
    it was no longer readable as one (SchemaMismatchError). Refused now as the Beam stages refuse it, --overwrite or
    not, one line and exit 2; and an --out inside a finished stage's folder too. The import layout stays: D/sub
    inside a finished import is fine."""
    _images(tmp_path)
    assert _cli(tmp_path, tmp_path / "D") == 0
    dataset = tmp_path / "D" / "pairs"
    before = _listing(dataset)
    for extra in ((), ("--overwrite",)):
        assert _cli(tmp_path, dataset, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lait import-captions: {dataset} holds Parquet files (") and err.count("\n") == 1, err
        assert "it is a dataset" in err and "Traceback" not in err
    assert _listing(dataset) == before, "the dataset is left alone"
    assert schemas.read_table(str(dataset), "pairs").num_rows == 2

    filtered = tmp_path / "run" / "filter"
    filtered.mkdir(parents=True)
    (filtered / "stats.json").write_text(json.dumps({"stage": "filter", "in": 3, "kept": 3}))
    for extra in ((), ("--overwrite",)):
        assert _cli(tmp_path, filtered / "new", *extra) == 2
        err = capsys.readouterr().err
        assert err == (f"lait import-captions: {filtered / 'new'} lies inside {filtered}, the folder of a finished "
                       f"filter run (its stats.json); give the import an --out of its own (e.g. a sibling of "
                       f"{filtered})\n"), err
    assert not (filtered / "new").exists()
    with pytest.raises(ImportExistsError, match="holds Parquet files"):
        import_captions([CaptionRecord("r1", "a.jpg", "red", "train")], str(tmp_path / "images"), str(dataset))

    assert _cli(tmp_path, tmp_path / "D" / "sub") == 0, "an import's folder may hold other folders"
    assert _cli(tmp_path, tmp_path / "run" / "mine") == 0, "beside a finished stage, not inside it"


def _rotated_jpeg(width, height, orientation):
    image = Image.effect_noise((width, height), 60).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def test_images_are_opened_and_measured_as_the_filter_stage_does(tmp_path):
    """The import checked an image with Image.open + verify(): a truncated JPEG and a PNG over Pillow's pixel
    limit (with a DecompressionBombWarning) were kept, and a photo turned by its EXIF orientation was stored at
    its stored size, not at the size shown (which the filter stage measures). Now filters.imageio opens and fully
    decodes each image: such images are image_unreadable, with the opener's reason in the detail."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "turned.jpg").write_bytes(_rotated_jpeg(60, 30, 6))  # shown 30 wide, 60 high
    whole = _rotated_jpeg(64, 64, 1)
    (images / "truncated.jpg").write_bytes(whole[:len(whole) // 3])
    Image.new("1", (9500, 9500)).save(images / "huge.png")  # 90.25 M pixels: a few KiB of file
    records = [CaptionRecord("r1", "turned.jpg", "a photo taken sideways", "train"),
               CaptionRecord("r2", "truncated.jpg", "half a picture", "train"),
               CaptionRecord("r3", "huge.png", "a bomb", "train")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        stats = import_captions(records, str(images), str(tmp_path / "out"))
    assert (stats["in"], stats["kept"], stats["images"]) == (3, 1, 1), stats
    assert stats["rejected_by_reason"] == {"image_unreadable": 2}
    (pair,) = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    assert (pair["width"], pair["height"]) == (30, 60), "the size as shown, after the EXIF orientation"
    from filters.image import image_header

    assert image_header(pair["image_bytes"])[:2] == (30, 60), "as the filter stage measures it"
    details = {r["detail"] for r in schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()}
    assert any(d.startswith("r2: truncated.jpg: undecodable: ") for d in details), details
    assert "r3: huge.png: decompression_bomb: 9500x9500 exceeds 89478485 pixels" in details, details


@pytest.mark.parametrize("split, message", [
    ("te\udcffst", "--split 'te\\xffst' is not UTF-8 text"),  # how Python hands over the argument's byte 0xFF
    ("", "--split '' is empty"),
    ("  ", "--split '  ' is empty"),
    (" test", "--split ' test' begins or ends with white space"),
])
def test_a_split_that_is_not_utf8_or_is_blank_is_one_line_before_out_is_touched(tmp_path, capsys, split, message):
    """--split $'te\\xffst' rejected every caption (record_invalid) and exited 0 with a finished import of nothing;
    a blank split named no split a training config can select."""
    _images(tmp_path)
    assert _cli(tmp_path, tmp_path / "out", "--split", split) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lait import-captions: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_split_argument_in_bytes_that_are_not_utf8_is_refused(tmp_path):
    """The same from the command line, where the bytes arrive as they were typed."""
    _images(tmp_path)
    (tmp_path / "t.tsv").write_text("a.jpg\ta red picture\n")
    proc = subprocess.run([sys.executable, "-m", "lait", "import-captions", str(tmp_path / "t.tsv"), "--format", "tsv",
                           "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--split", b"te\xffst"],
                          capture_output=True, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(b"lait import-captions: --split 'te\\xffst' is not UTF-8 text"), proc.stderr
    assert proc.stderr.count(b"\n") == 1 and not (tmp_path / "out").exists()


def test_pairs_rows_are_written_for_images_with_a_kept_caption_and_carry_one(tmp_path):
    """An image whose first caption was blank got a pairs/ row captioned with its file name although a real caption
    followed; an image whose captions were all rejected got a row too, and counted in `images`."""
    images = _images(tmp_path)
    Image.new("RGB", (20, 10), (0, 0, 255)).save(images / "c.png")
    records = [CaptionRecord("r1", "a.jpg", " ", "train"),  # caption_empty
               CaptionRecord("r2", "a.jpg", "a red  picture", "train"),
               CaptionRecord("r3", "b.png", "", "train"),  # b.png: no kept caption
               CaptionRecord("r2", "c.png", "a blue one", "train"),  # duplicate_caption: c.png has none either
               CaptionRecord("r4", "a.jpg", "red again", "train")]
    stats = import_captions(records, str(images), str(tmp_path / "out"))
    assert (stats["in"], stats["kept"], stats["rejected"], stats["images"]) == (5, 2, 3, 1), stats
    assert stats["rejected_by_reason"] == {"caption_empty": 2, "duplicate_caption": 1}
    pairs = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    assert [(p["caption"], p["image_url"].rsplit("/", 1)[1]) for p in pairs] == [("a red picture", "a.jpg")]
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    assert {c["image_id"] for c in captions} == {p["image_id"] for p in pairs}

    from demo import audit

    result = audit.audit_run(str(tmp_path / "out"))
    assert result["ok"], [c for stage in result["stages"] for c in stage["checks"] if not c["ok"]]


def _partial_import(tmp_path, marker) -> str:
    """An --out as an import left it while it ran: its marker, a captions/ shard, no stats.json."""
    from model.captions_import import IMPORT_MARKER

    out = tmp_path / "out"
    (out / "captions").mkdir(parents=True)
    (out / "captions" / "part-00000.parquet").write_bytes(b"written by the running import")
    (out / IMPORT_MARKER).write_text(json.dumps(marker))
    return str(out)


def test_an_import_still_going_is_refused_and_one_that_ended_is_cleared(tmp_path, capsys, sleeper):
    """A second import into the folder of one still going took it for an interrupted one and removed its shards
    while it wrote more (its stats.json then counted captions the folder no longer held)."""
    from pipeline import outputs

    _images(tmp_path)
    out = _partial_import(tmp_path, outputs.run_marker("import_captions", pid=sleeper.pid))
    for extra in ((), ("--overwrite",)):
        assert _cli(tmp_path, out, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by an import still going (pid {sleeper.pid} on host" in err
        assert os.path.exists(os.path.join(out, "captions", "part-00000.parquet"))
    sleeper.kill()
    sleeper.wait()
    assert _cli(tmp_path, out) == 0, "its process gone, the folder is an interrupted import's, cleared"
    assert schemas.read_table(os.path.join(out, "captions"), "captions").num_rows == 2


def test_an_import_marked_on_another_host_needs_overwrite(tmp_path, capsys):
    from pipeline import outputs

    _images(tmp_path)
    out = _partial_import(tmp_path, dict(outputs.run_marker("import_captions"), host="another-machine"))
    assert _cli(tmp_path, out) == 2
    assert "started on another host (pid" in capsys.readouterr().err
    assert _cli(tmp_path, out, "--overwrite") == 0
    assert schemas.read_table(os.path.join(out, "captions"), "captions").num_rows == 2


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused_and_the_current_folder_left_alone(tmp_path, capsys, monkeypatch, out):
    """An unset $OUT (``--out ""``) named the current folder: with --overwrite its finished import's pairs/ and
    stats.json were deleted, then the import failed on ''."""
    _images(tmp_path)
    assert _cli(tmp_path, tmp_path / "work") == 0
    before = _listing(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    capsys.readouterr()
    for extra in ((), ("--overwrite",)):
        assert _cli(tmp_path, out, *extra) == 2
        err = capsys.readouterr().err
        assert err == f"lait import-captions: --out {out!r} is empty; give the folder to write the import to\n"
    assert _listing(tmp_path / "work") == before
    with pytest.raises(ValueError, match="is empty"):
        import_captions([CaptionRecord("c1", "a.jpg", "a red picture", "test")], str(tmp_path / "images"), out,
                        overwrite=True)
    assert _listing(tmp_path / "work") == before
