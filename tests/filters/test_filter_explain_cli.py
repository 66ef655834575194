"""`lait explain` in process: text output, JSON with lang and score, an image, and the usage error."""
import io
import json
import sys

import pytest

from filters.synthetic import make_image
from lait import cli


def test_explain_text_and_image(tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_image(21, 200, 200))
    assert cli.main(["explain", "a brown dog running on the beach", "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("REJECT") and "image_too_small" in out and "ok   language" in out
    assert cli.main(["explain", "a brown dog running on the beach", "--image", str(image), "--min-side", "150"]) == 0
    assert capsys.readouterr().out.startswith("KEEP")


def test_explain_json_page_evidence_and_errors(capsys):
    assert cli.main(["explain", "--json", "Hotel Berlin", "--min-words", "2", "--page-lang", "en", "--page-text",
                     "Welcome to our family blog with the photos from our summer holiday by the sea."]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lang"] == "en" and "page" in result["lang_evidence"] and result["keep"]
    assert cli.main(["explain"]) == 2


def test_explain_refuses_page_evidence_with_no_page_lang(capsys):
    """--no-page-lang ignores the page's language and text: --page-lang or --page-text beside it (they used to be
    ignored without a word) is a one-line error naming them."""
    base = ["explain", "--json", "Hotel Berlin", "--min-words", "2", "--no-page-lang"]
    assert cli.main([*base, "--page-lang", "en"]) == 2
    _one_line_error(capsys, "--no-page-lang ignores the page's language and text: leave out --page-lang")
    assert cli.main([*base, "--page-lang", "", "--page-text", "Welcome to our blog."]) == 2
    _one_line_error(capsys, "leave out --page-lang and --page-text")
    assert cli.main(base) == 0
    assert json.loads(capsys.readouterr().out)["lang"] == "de"


def test_explain_missing_image_and_bad_options_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["explain", "--image", str(tmp_path / "nope.jpg"), "a dog on the beach"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lait explain: error: ") and "nope.jpg" in err and err.count("\n") == 1
    assert cli.main(["explain", "--langs", "english", "a dog on the beach"]) == 2
    assert "--langs: 'english'" in capsys.readouterr().err
    assert cli.main(["explain", "--captions", str(tmp_path / "absent.txt")]) == 2


def _one_line_error(capsys, *parts):
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("lait explain: error: ") and captured.err.count("\n") == 1
    assert all(part in captured.err for part in parts), captured.err
    return captured.err


@pytest.mark.parametrize("content, message", [
    (b"", "holds no words"),
    (b"\n\n# my words\n", "holds no words"),
    ("dog\ncafé\n".encode("latin-1"), "line 2 is not UTF-8 text"),
])
def test_explain_refuses_an_unusable_vocabulary_file_up_front(tmp_path, capsys, content, message):
    vocab = tmp_path / "words.txt"
    vocab.write_bytes(content)
    assert cli.main(["explain", "--vocab", str(vocab), "a brown dog running on the beach"]) == 2
    _one_line_error(capsys, "--vocab: ", str(vocab), message)
    assert cli.main(["explain", "--vocab", str(tmp_path), "a brown dog running on the beach"]) == 2
    _one_line_error(capsys, f"--vocab: cannot read {tmp_path}: Is a directory")


def test_explain_vocab_spellings(capsys):
    assert cli.main(["explain", "--vocab", "", "a dog on the beach"]) == 2  # an unset variable, not "off"
    _one_line_error(capsys, "--vocab: give 'auto', 'none'")
    for vocab in ("EN", "AUTO", "None"):  # read in any case, as --langs EN is
        assert cli.main(["explain", "--json", "--vocab", vocab, "a dog on the beach"]) == 0
        assert json.loads(capsys.readouterr().out)["keep"]


def test_explain_captions_that_are_not_utf8_name_the_file_and_line(tmp_path, capsys, monkeypatch):
    captions = tmp_path / "captions.txt"
    captions.write_bytes(b"a brown dog running on the beach\n\na red car\xff parked by the road\n")
    assert cli.main(["explain", "--captions", str(captions)]) == 2
    _one_line_error(capsys, f"--captions {captions}: line 3 is not UTF-8 text (0xff at byte 10", "invalid_utf8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(captions.read_bytes()), errors="surrogateescape"))
    assert cli.main(["explain", "--captions", "-"]) == 2
    _one_line_error(capsys, "--captions <stdin>: line 3 is not UTF-8 text")
    # an argument with such bytes (Python keeps each as a lone surrogate)
    assert cli.main(["explain", "a dog", "a red car\udcff parked by the road"]) == 2
    _one_line_error(capsys, "caption 2 is not UTF-8 text")


def test_explain_captions_from_stdin_with_a_bom_and_crlf(capsys, monkeypatch):
    data = "\ufeffa brown dog running on the beach\r\n\r\nein schwarzer Hund im Garten\r\n".encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert cli.main(["explain", "--json", "--captions", "-"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["caption"] for r in results] == ["a brown dog running on the beach", "ein schwarzer Hund im Garten"]
    assert not sys.stdin.closed  # stdin is not explain's to close


def test_explain_empty_or_unreadable_captions_and_image_name_the_option(tmp_path, capsys):
    empty = tmp_path / "captions.txt"
    empty.write_text("\n  \n")
    assert cli.main(["explain", "--captions", str(empty)]) == 2
    _one_line_error(capsys, f"--captions {empty}: no captions in it")
    assert cli.main(["explain", "--captions", str(tmp_path)]) == 2
    _one_line_error(capsys, f"--captions {tmp_path}: cannot read it (Is a directory)")
    assert cli.main(["explain", "--image", str(tmp_path), "a dog on the beach"]) == 2
    _one_line_error(capsys, f"--image {tmp_path}: cannot read it (Is a directory)")
    assert cli.main(["explain"]) == 2
    _one_line_error(capsys, "give captions, --captions FILE or --image FILE")


@pytest.mark.parametrize("rate", ["0.1", "0.5"])  # 0.5: the default value, given, is as ignored
def test_explain_warns_of_max_oov_rate_with_vocab_none_as_the_filter_does(capsys, rate):
    caption = "a brown dog running on the beach"
    assert cli.main(["explain", "--json", "--vocab", "none", "--max-oov-rate", rate, caption]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"lait explain: warning: --max-oov-rate {rate} is ignored: --vocab none turns the OOV "
                            f"check off\n")
    result = json.loads(captured.out)
    assert result["keep"] and "oov" not in result["filters"]
    for extra in (["--vocab", "none"], ["--max-oov-rate", rate]):  # either alone: nothing to warn of
        assert cli.main(["explain", "--json", *extra, caption]) == 0
        assert capsys.readouterr().err == ""


def test_explain_warns_of_image_options_without_an_image(tmp_path, capsys):
    """The image rules run on --image FILE only: their options given without one (at any value, the defaults too)
    are warned of on stderr, one line, and explain goes on; with an image they apply, with their defaults."""
    caption = "a brown dog running on the beach"
    assert cli.main(["explain", caption, "--min-side", "300", "--allow-animated"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ("lait explain: warning: --min-side, --allow-animated are ignored: the image rules run "
                            "only on an --image FILE\n") and captured.out.startswith("KEEP")
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_image(21, 200, 200))
    assert cli.main(["explain", caption, "--image", str(image), "--min-side", "150"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("KEEP")
    assert cli.main(["explain", "--json", caption, "--image", str(image)]) == 0  # the default --min-side 300
    result = json.loads(capsys.readouterr().out)
    assert not result["keep"] and result["filters"]["image"]["reason"] == "image_too_small"
