"""Two imports into one --out at once: the second waits for the first's claim, then is refused."""
import os
import sys
import textwrap

from PIL import Image

from model import captions_import
from pipeline import outputs
from tests.procs import json_answer, start_apart, wait_while_running

#: Another import into the same folder, from a folder of images and a TSV; it answers a line (JSON).
OTHER = textwrap.dedent("""
    import json, sys
    from model import captions_import
    try:
        stats = captions_import.import_captions(
            [captions_import.CaptionRecord("other-1", "b.png", "a green square", "train")], sys.argv[2], sys.argv[3])
        print(json.dumps(["imported", stats.get("kept")]), flush=True)
    except captions_import.ImportExistsError as exc:
        print(json.dumps(["refused", str(exc)]), flush=True)
""")


def test_an_import_started_while_another_claims_the_folder_is_refused(tmp_path, monkeypatch):
    """Both imports found the folder free, both wrote shards into it, and the second's marker replaced the
    first's: the folder held both imports' captions, and each stats.json counted its own."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(images / "a.jpg")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(images / "b.png")
    out = str(tmp_path / "out")
    os.makedirs(out)
    started = []
    real = outputs.run_marker

    def marker_while_the_other_starts(stage):
        if not started:
            started.append(start_apart(sys.executable, "-c", OTHER, "-", str(images), out, cwd=os.getcwd()))
            # until it waits for this claim, or has finished its own import (what the old code let it)
            wait_while_running(started[0])
        return real(stage)

    monkeypatch.setattr(outputs, "run_marker", marker_while_the_other_starts)
    stats = captions_import.import_captions(
        [captions_import.CaptionRecord("mine-1", "a.jpg", "a red picture", "train")], str(images), out)
    status, said = json_answer(started[0])
    assert status == "refused", said
    assert said.startswith(f"{out} is in use by an import") and str(os.getpid()) in said, said
    assert stats["kept"] == 1
    import schemas

    captions = schemas.read_table(os.path.join(out, "captions"), "captions").to_pylist()
    assert [c["caption_id"] for c in captions] == ["mine-1"]
