"""Filter-stage fixes: an empty --input/--output never touches the current folder; caption cleaning decodes only
complete entities, reads a zero-width space as a space, and takes "Sam 1776" for words; near-duplicate details
name the same pair whatever the order of the marks."""
from __future__ import annotations

import json

import pytest

from filters.text import BoilerplateFilter, normalize_text


# ------------------------------------------------------------------------------------------ empty paths

@pytest.fixture
def inputs(tmp_path):
    """A crawl and a filter output (one pair each) beside ``work/``, the current folder, which holds a finished
    filter run: the input lies outside the current folder, so only the empty-path check stands in the way."""
    import schemas
    from filters.synthetic import candidate, make_image

    row = candidate(make_image(40, 400, 400), "a brown dog running on the beach", 0)
    (tmp_path / "crawl" / "candidates").mkdir(parents=True)
    schemas.write_table(schemas.to_table([row], "candidates"),
                        str(tmp_path / "crawl" / "candidates" / "part-00000.parquet"), "candidates")
    (tmp_path / "filter" / "pairs").mkdir(parents=True)
    schemas.write_table(schemas.to_table([], "pairs"), str(tmp_path / "filter" / "pairs" / "part-00000.parquet"),
                        "pairs")
    work = tmp_path / "work"
    work.mkdir()
    (work / "pairs").mkdir()
    (work / "pairs" / "part-00000.parquet").write_bytes(b"PAR1 data PAR1")
    (work / "rejected").mkdir()
    (work / "stats.json").write_text(json.dumps({"stage": "filter", "in": 1, "kept": 1}))
    return tmp_path


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _one_error_line(err: str, option: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and f"{option} " in lines[0] and "is empty" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("empty", ["", "  "])
def test_lait_filter_with_an_empty_output_leaves_the_current_folder_alone(inputs, monkeypatch, capsys, empty):
    from lait.cli import main

    before = _snapshot(inputs)
    monkeypatch.chdir(inputs / "work")
    assert main(["filter", "--input", "../crawl", "--output", empty, "--overwrite"]) == 2  # was: pairs/ ... deleted
    _one_error_line(capsys.readouterr().err, "--output")
    assert _snapshot(inputs) == before
    assert main(["filter", "--input", "../crawl", "--output", empty]) == 2  # was: a stray _run.started.json
    assert _snapshot(inputs) == before


@pytest.mark.parametrize("option", ["--input", "--output"])
def test_python_m_pipeline_filter_refuses_an_empty_path(inputs, monkeypatch, capsys, option):
    from pipeline.filter import main

    before = _snapshot(inputs)
    monkeypatch.chdir(inputs / "work")
    paths = {"--input": "../crawl", "--output": "../out", option: ""}
    assert main(["--input", paths["--input"], "--output", paths["--output"], "--overwrite",
                 "--runner", "DirectRunner"]) == 2
    _one_error_line(capsys.readouterr().err, option)
    assert _snapshot(inputs) == before


@pytest.mark.parametrize("option", ["--input", "--output"])
def test_relevance_score_refuses_an_empty_path(inputs, monkeypatch, capsys, option):
    from lait.cli import main
    from pipeline import relevance

    (inputs / "work" / "stats.json").unlink()  # nothing finished there: the run wrote into it and said it succeeded
    before = _snapshot(inputs)
    monkeypatch.chdir(inputs / "work")
    monkeypatch.setattr(relevance, "check_model_args", lambda args: None)  # no model needed to reach the output
    paths = {"--input": "../filter", "--output": "../out", option: " "}
    assert main(["relevance", "score", "--input", paths["--input"], "--output", paths["--output"],
                 "--model", "../model"]) == 2
    _one_error_line(capsys.readouterr().err, option)
    assert _snapshot(inputs) == before


def test_python_m_pipeline_relevance_refuses_an_empty_output(inputs, monkeypatch, capsys):
    from pipeline import relevance

    before = _snapshot(inputs)
    monkeypatch.chdir(inputs / "work")
    monkeypatch.setattr(relevance, "check_model_args", lambda args: None)
    assert relevance.main(["--input", "../filter", "--output", "", "--model", "../model"]) == 2
    _one_error_line(capsys.readouterr().err, "--output")
    assert _snapshot(inputs) == before


@pytest.mark.parametrize("empty", ["", " \t"])
def test_prepare_output_refuses_an_empty_output_before_deleting_anything(inputs, monkeypatch, empty):
    from pipeline.outputs import prepare_output

    before = _snapshot(inputs)
    monkeypatch.chdir(inputs / "work")
    with pytest.raises(ValueError, match="is empty"):
        prepare_output(empty, "filter", ("pairs", "rejected"), overwrite=True)
    assert _snapshot(inputs) == before


# ------------------------------------------------------------------------------------------ entities

@pytest.mark.parametrize("text,clean", [
    ("Tips &notes for the exam", "Tips &notes for the exam"),  # html.unescape: "Tips ¬es"
    ("the Rose &parade in Pasadena", "the Rose &parade in Pasadena"),  # "¶de"
    ("Tips &amp;notes for the exam", "Tips &notes for the exam"),  # one entity decoded, the "&" left is text
    ("Fish &chips; and more", "Fish &chips; and more"),  # no such entity: text
    ("Caf&eacute; Caf&#233; Caf&#xE9; Caf&#XE9;", "Café Café Café Café"),
    ("Tom &amp;amp; Jerry", "Tom & Jerry"),  # double-escaped: two passes, as before
    ("&lt;i&gt;Caf&eacute;&lt;/i&gt; au lait", "Café au lait"),
    ("AT&amp;T and AT&T", "AT&T and AT&T"),
])
def test_only_complete_entities_are_decoded(text, clean):
    assert normalize_text(text) == clean


# ------------------------------------------------------------------------------------------ zero-width space

def test_a_zero_width_space_between_words_is_a_space():
    assert normalize_text("a brown\u200bdog\u200bon the beach") == "a brown dog on the beach"
    assert normalize_text("a dog\u2028on\u2029the beach") == "a dog on the beach"  # line/paragraph separators
    # the other format characters are dropped, as before: inside words they join or hyphenate
    assert normalize_text("dog\u00adhouse dog\u2060house \u200ea\u200f") == "doghouse doghouse a"
    assert normalize_text("a\u200cb c\u200dd") == "ab cd"


# ------------------------------------------------------------------------------------------ file names

@pytest.mark.parametrize("caption", ["Uncle Sam 1776 poster on a brick wall", "our dog with Sam 2019 at the lake",
                                     "a photo with img 1234 in the corner", "UNCLE SAM 1776 POSTER ON A WALL"])
def test_a_camera_prefix_and_a_number_apart_in_a_sentence_are_words(caption):
    assert BoilerplateFilter()({"caption": caption}).keep


@pytest.mark.parametrize("caption", ["IMG_1234", "holiday DSC01234 at the beach", "DSCN0001 at the lake",
                                     "dsc-01234 holiday", "WP_20150101_001 at home", "PXL_20230101_123456789",
                                     "IMG 1234", "DSC 01234", "SAM 0042", "Screenshot 2024-01-05 at 10.22.31",
                                     "photo of sunset.png here"])
def test_camera_file_names_are_still_caught(caption):
    decision = BoilerplateFilter()({"caption": caption})
    assert (decision.keep, decision.reason) == (False, "caption_is_filename"), decision


# ------------------------------------------------------------------------------------------ near duplicates

def test_near_duplicate_detail_does_not_depend_on_the_order_of_the_marks():
    from filters.dedup import rank_key
    from pipeline.filter import _ranked_marks, _split_marked

    phash = "00000000000000ff"
    pairs = {pid: {"pair_id": pid, "candidate_id": pid, "image_id": pid, "caption": f"caption {pid}",
                   "relevance": relevance, "phash": phash}
             for pid, relevance in (("best", 0.9), ("good", 0.8), ("dup", 0.1))}
    # two band buckets that each saw a different better pair of "dup"
    marks = [m for bucket in (("good", "dup"), ("best", "dup"))
             for m in _ranked_marks([(p, phash, rank_key(pairs[p])) for p in bucket], 4)]
    assert [pid for pid, _ in marks] == ["dup", "dup"]
    details = set()
    for order in (marks, marks[::-1]):
        out = list(_split_marked(("dup", {"pair": [pairs["dup"]], "mark": [m for _, m in order]})))
        assert [o.tag for o in out] == ["rejected"]
        details.add(out[0].value["detail"])
    assert details == {"near pair best"}  # the best-ranked of them


def test_no_text_says_whether_the_texts_were_empty_or_cleaned_to_nothing():
    """The detail said "alt, title and figcaption are empty" of an alt that held only escaped markup."""
    from filters.rules import RuleFilters
    from filters.synthetic import candidate, make_image

    photo = make_image(11, 400, 320)
    rules = RuleFilters()
    _, rejected = rules.apply(candidate(photo, "&lt;script&gt;x&lt;/script&gt;", 1, title="\u200d"))
    assert (rejected["reason"], rejected["detail"]) == (
        "no_text", "alt, title cleaned to nothing (markup, entities or invisible characters alone)")
    _, rejected = rules.apply(candidate(photo, "  ", 2, title=None))
    assert (rejected["reason"], rejected["detail"]) == ("no_text", "alt, title and figcaption are empty")
