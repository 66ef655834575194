"""`lait import-captions --format tsv`: lines without a TAB, lines with too many fields, a CSV given as a TSV;
and the finished-run check of `--out`, which reads stats.json through pipeline.outputs without Beam."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import schemas
from imagebert_testlib import REPO
from lait import cli


def _images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(images / "a.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "b.png")
    return images


def _import(tmp_path, name, content, *extra, out="out"):
    """Runs the CLI on a TSV holding ``content``; returns its exit status and the stats it wrote (or None)."""
    source = tmp_path / name
    source.write_bytes(content.encode() if isinstance(content, str) else content)
    status = cli.main(["import-captions", str(source), "--format", "tsv", "--images", str(tmp_path / "images"),
                       "--out", str(tmp_path / out), *extra])
    stats = tmp_path / out / "stats.json"
    return status, json.loads(stats.read_text()) if status == 0 else None


def test_a_csv_given_as_tsv_is_one_clear_error_before_out_is_touched(tmp_path, capsys):
    """A comma-separated file given to --format tsv exited 0 with every line (its header too, `in: 3`) rejected as
    image_missing, although every image existed; nothing said the lines held no TAB."""
    _images(tmp_path)
    csv = "file_name,caption\na.jpg,a red picture\nb.png,a green square\n"
    status, _ = _import(tmp_path, "c.csv", csv)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"lait import-captions: {tmp_path / 'c.csv'} is not a valid tsv file (no TAB in any of its "
                          f"3 lines: a tsv line is image_file<TAB>caption; they look comma-separated"), err
    assert not (tmp_path / "out").exists(), "--out is not touched"
    # Refused before --overwrite removes a finished import
    assert _import(tmp_path, "good.tsv", "a.jpg\ta red picture\n")[0] == 0
    assert _import(tmp_path, "c.csv", csv, "--overwrite")[0] == 2
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 1, "the finished import is intact"


@pytest.mark.parametrize("content, message", [
    ("a.jpg a red picture\n", "its one line has no TAB: a tsv line is image_file<TAB>caption)"),
    ("\ufeffimage_file\n\na.jpg red\r\n\nb.png green\r\n", "no TAB in any of its 2 lines: a tsv line is"),
    ("".join(f"a.jpg,red {n}\n" for n in range(25)), "no TAB in any of its first 20 lines: a tsv line is"),
])
def test_a_tsv_whose_first_lines_hold_no_tab_is_refused(tmp_path, capsys, content, message):
    _images(tmp_path)
    assert _import(tmp_path, "t.tsv", content)[0] == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert ("comma-separated" in err) == ("," in content)


def test_tsv_lines_without_a_tab_or_with_more_than_two_fields_are_counted_record_invalid(tmp_path):
    """A line without a TAB was taken whole as a file name (image_missing); `b.png<TAB>three<TAB>columns` became the
    caption "three columns". Both are record_invalid now, with a detail saying why; in = kept + rejected."""
    _images(tmp_path)
    tsv = ("image_file\tcaption\na.jpg\ta red picture\nb.png\tthree\tcolumns\nb.png a green square\n\n"
           "b.png\tgreen\ta.jpg\tred\t\nfile_name,caption\nb.png\ta green square\n")
    status, stats = _import(tmp_path, "t.tsv", tsv, "--split", "val")
    assert status == 0
    assert stats["in"] == 6 and stats["kept"] == 2 and stats["rejected"] == 4 == stats["in"] - stats["kept"]
    assert stats["rejected_by_reason"] == {"record_invalid": 4} and stats["images"] == 2
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    assert {c["caption_id"]: c["caption"] for c in captions} == {"tsv:2": "a red picture", "tsv:8": "a green square"}
    details = sorted(r["detail"] for r in schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist())
    assert details == [
        "tsv:3: line 3 has 3 TAB-separated fields, not 2 (image_file<TAB>caption; a caption cannot hold a TAB)",
        "tsv:4: line 4 has no TAB between image_file and caption ('b.png a green square')",
        "tsv:6: line 6 has 5 TAB-separated fields, not 2 (image_file<TAB>caption; a caption cannot hold a TAB)",
        "tsv:7: line 7 has no TAB between image_file and caption ('file_name,caption')",
    ]
    # A header line with more columns is still a header; its data lines are rejected, each one counted.
    status, stats = _import(tmp_path, "h.tsv", "image\tcaption\tsplit\na.jpg\tred\ttest\n", out="out-h")
    assert status == 0 and stats["in"] == 1 and stats["rejected_by_reason"] == {"record_invalid": 1}


@pytest.mark.parametrize("content", ["image_file\tcaption\n", "", "\n\r\n\n", "\ufeffimage\r"])
def test_a_tsv_without_a_caption_line_is_refused_before_out_is_touched(tmp_path, capsys, content):
    """A file holding only a header (or nothing) was a finished import of nothing (exit 0, stats.json written);
    the rerun with the right file was then refused as "already holds a finished import"."""
    _images(tmp_path)
    assert _import(tmp_path, "t.tsv", content)[0] == 2
    err = capsys.readouterr().err
    assert err == (f"lait import-captions: {tmp_path / 't.tsv'} holds no captions read as a tsv file (it is empty, "
                   f"or holds a header or blank lines alone); --out is not touched\n")
    assert not (tmp_path / "out").exists()


def test_a_tsv_with_cr_line_ends_is_read_line_by_line(tmp_path):
    """Excel for Mac ends lines with CR alone: the file was read as one line, which began with image_file and so was
    skipped as a header (in 0, exit 0). CR, LF and CRLF all end a line now, mixed too; line numbers count them."""
    _images(tmp_path)
    tsv = "\ufeffimage_file\tcaption\ra.jpg\ta red picture\rb.png\ta green square\r\na.jpg\tred again\nb.png green\r"
    status, stats = _import(tmp_path, "mac.tsv", tsv.encode())
    assert status == 0 and (stats["in"], stats["kept"], stats["images"]) == (4, 3, 2), stats
    captions = schemas.read_table(str(tmp_path / "out" / "captions"), "captions").to_pylist()
    assert {c["caption_id"]: c["caption"] for c in captions} == {
        "tsv:2": "a red picture", "tsv:3": "a green square", "tsv:4": "red again"}
    (rejected,) = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert rejected["detail"] == "tsv:5: line 5 has no TAB between image_file and caption ('b.png green')"


@pytest.mark.parametrize("encoding, message", [
    ("utf-16", "it is UTF-16 text (byte-order mark FF FE): save it as UTF-8"),  # Excel's "Unicode Text"
    ("utf-16-be", "39 of its first 78 bytes are NUL (UTF-16 or UTF-32 text?): save it as UTF-8"),
    ("utf-32", "it is UTF-32 text (byte-order mark FF FE 00 00): save it as UTF-8"),
])
def test_a_utf16_or_utf32_tsv_is_one_clear_error(tmp_path, capsys, encoding, message):
    """A UTF-16 TSV (BOM FF FE) gave `in 3` for 2 lines, with record_invalid reasons for lines that were fine."""
    _images(tmp_path)
    content = "image_file\tcaption\na.jpg\ta red picture\n".encode(encoding)
    assert _import(tmp_path, "u.tsv", content)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lait import-captions: {tmp_path / 'u.tsv'} is not a valid tsv file (") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists(), err
    # One NUL in a line is that line's problem, not the file's: counted, the rest imported
    status, stats = _import(tmp_path, "nul.tsv", "a.jpg\ta red picture\nb\x00.png\tgreen\n")
    assert status == 0 and stats["kept"] == 1 and stats["rejected_by_reason"] == {"image_path_invalid": 1}


def test_an_images_folder_whose_name_is_not_utf8_imports(tmp_path):
    """--images $'imgs\\xe9' failed with "'utf-8' codec can't encode character '\\udce9'" (the pairs' file:// URL)
    and left --out holding only the import's running mark. The URL is percent-encoded now."""
    images = os.fsencode(tmp_path) + b"/imgs\xe9"
    os.mkdir(images)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(os.fsdecode(images + b"/a b.jpg"))
    (tmp_path / "t.tsv").write_text("a b.jpg\ta red picture\n")
    status = cli.main(["import-captions", str(tmp_path / "t.tsv"), "--format", "tsv", "--images",
                       os.fsdecode(images), "--out", str(tmp_path / "out")])
    assert status == 0 and json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 1
    (pair,) = schemas.read_table(str(tmp_path / "out" / "pairs"), "pairs").to_pylist()
    assert pair["image_url"] == "file://" + str(tmp_path) + "/imgs%E9/a%20b.jpg"


def test_the_finished_run_check_of_out_reads_stats_json_without_beam(tmp_path):
    """prepare_output names another stage's finished run (refused even with --overwrite) and replaces a finished
    import on --overwrite, reading stats.json through pipeline.outputs.stage_of without importing Beam (not in the
    `train` extra that `lait import-captions` needs)."""
    _images(tmp_path)
    (tmp_path / "t.tsv").write_text("a.jpg\tred\n")
    (tmp_path / "filtered").mkdir()
    (tmp_path / "filtered" / "stats.json").write_text(json.dumps({"stage": "filter", "kept": 3}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "stats.json").write_text("{not json")  # a finished import's, as far as anyone can tell
    script = f"""
import sys
from lait import cli
def run(out, *extra):
    return cli.main(["import-captions", {str(tmp_path / "t.tsv")!r}, "--format", "tsv", "--images",
                     {str(tmp_path / "images")!r}, "--out", {str(tmp_path)!r} + "/" + out, *extra])
assert run("filtered", "--overwrite") == 2
assert run("broken") == 2 and run("broken", "--overwrite") == 0
assert run("fresh") == 0 and run("fresh") == 2 and run("fresh", "--overwrite") == 0
print("beam imported:", "apache_beam" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    assert "beam imported: False" in proc.stdout, proc.stdout
    assert f"{tmp_path / 'filtered'} holds a finished filter run, not an import" in proc.stderr
    assert proc.stderr.count("already holds a finished import") == 2, proc.stderr
    assert json.loads((tmp_path / "filtered" / "stats.json").read_text())["stage"] == "filter", "left alone"
    assert json.loads((tmp_path / "broken" / "stats.json").read_text())["stage"] == "import_captions"
