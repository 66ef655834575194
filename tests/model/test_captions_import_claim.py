"""Two imports into one --out at once: the second waits for the first's claim, then is refused."""
import json
import os
import select
import subprocess
import sys
import textwrap
import time

from PIL import Image

from model import captions_import
from pipeline import outputs
from tests.procs import waiting_for_a_lock

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
            # Through a shell, so that it is no child of this process (as a second command would be).
            started.append(subprocess.Popen(["sh", "-c", '"$0" -c "$1" "$2" "$3" "$4"; exit $?', sys.executable, OTHER,
                                             "-", str(images), out], stdout=subprocess.PIPE, text=True,
                                            cwd=os.getcwd()))
            other = started[0]
            deadline = time.monotonic() + 120
            # until it waits for this claim, or has finished its own import (what the old code let it)
            while time.monotonic() < deadline and not waiting_for_a_lock() and other.poll() is None:
                time.sleep(0.02)
        return real(stage)

    monkeypatch.setattr(outputs, "run_marker", marker_while_the_other_starts)
    stats = captions_import.import_captions(
        [captions_import.CaptionRecord("mine-1", "a.jpg", "a red picture", "train")], str(images), out)
    other = started[0]
    ready, _, _ = select.select([other.stdout], [], [], 120)
    assert ready, "the other import never answered"
    status, said = json.loads(other.stdout.readline())
    other.wait()
    assert status == "refused", said
    assert said.startswith(f"{out} is in use by an import") and str(os.getpid()) in said, said
    assert stats["kept"] == 1
    import schemas

    captions = schemas.read_table(os.path.join(out, "captions"), "captions").to_pylist()
    assert [c["caption_id"] for c in captions] == ["mine-1"]
