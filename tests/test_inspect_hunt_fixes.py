"""`lait inspect`: --json of a folder is a list whatever number of datasets it holds, and text output shows control
characters escaped instead of sending them to the terminal."""
import json

import schemas
from lait import cli


def _pairs(path, caption="a red circle"):
    rows = [{"pair_id": "p0", "image_id": "img0", "caption": caption}]
    schemas.write_table(schemas.to_table(rows, "pairs"), str(path / "part-00000.parquet"), "pairs")


def test_json_of_a_folder_is_a_list_even_of_one_dataset(tmp_path, capsys):
    """A run or stage folder gave a list for two datasets and one object for one."""
    _pairs(tmp_path / "filter" / "pairs")
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert isinstance(one, list) and [info["kind"] for info in one] == ["pairs"]
    _pairs(tmp_path / "filter" / "rejected_like")  # not a dataset folder name: still one dataset found
    assert cli.main(["inspect", str(tmp_path / "filter"), "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    # a dataset named directly is one object
    assert cli.main(["inspect", str(tmp_path / "filter" / "pairs"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "pairs"


def test_text_output_escapes_control_characters(tmp_path, capsys):
    """A crawled caption holding terminal escapes (clear screen, a bell) and a newline was printed raw: it could
    clear the terminal or forge lines of the output."""
    _pairs(tmp_path, "\x1b[2J\x1b[H\x1b[31mFAKE: 0 rows\nrow 1:\x07 caf\u00e9")
    assert cli.main(["inspect", str(tmp_path), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07")
    line = [line for line in out.splitlines() if line.strip().startswith("caption")][-1]  # the row's, after the schema's
    assert line.endswith("\\x1b[2J\\x1b[H\\x1b[31mFAKE: 0 rows\\nrow 1:\\x07 caf\u00e9")
    assert "FAKE" not in "".join(l for l in out.splitlines() if not l.strip().startswith("caption"))
