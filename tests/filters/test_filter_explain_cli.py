"""`lait explain` in process: text output, JSON with lang and score, an image, and the usage error."""
import json

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
    assert cli.main(["explain", "--json", "Hotel Berlin", "--min-words", "2", "--no-page-lang", "--page-lang", "en"]) == 0
    assert json.loads(capsys.readouterr().out)["lang"] == "de"
    assert cli.main(["explain"]) == 2


def test_explain_missing_image_and_bad_options_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["explain", "--image", str(tmp_path / "nope.jpg"), "a dog on the beach"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lait explain: error: ") and "nope.jpg" in err and err.count("\n") == 1
    assert cli.main(["explain", "--langs", "english", "a dog on the beach"]) == 2
    assert "--langs: 'english'" in capsys.readouterr().err
    assert cli.main(["explain", "--captions", str(tmp_path / "absent.txt")]) == 2
