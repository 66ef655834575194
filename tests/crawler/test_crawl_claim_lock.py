"""Two crawl runs claiming one --out at once: the second waits for the first's claim, then is refused."""
import json
import os
import sys
import textwrap

from crawler import output
from pipeline import outputs
from tests.procs import json_answer, start_apart, wait_while_running

#: Another process that claims a folder for a crawl, answering a line (JSON: "claimed" or "refused", the error).
CLAIMER = textwrap.dedent("""
    import json, sys
    from crawler import output
    try:
        output.claim(sys.argv[1])
        print(json.dumps(["claimed", ""]), flush=True)
    except output.OutputFolderError as exc:
        print(json.dumps(["refused", str(exc)]), flush=True)
""")


def test_a_crawl_claiming_the_folder_while_another_has_read_its_marker_is_refused(tmp_path, monkeypatch):
    """The claim read the marker, removed what lay at its name as an ended run's, then wrote its own: a run that
    claimed the folder between the read and the removal lost its live marker, and both crawled into the folder."""
    out = str(tmp_path / "out")
    os.makedirs(out)
    started = []

    def read_then_the_other_claims(real):
        def read(*args, **kwargs):
            found = real(*args, **kwargs)
            if not started:
                started.append(start_apart(sys.executable, "-c", CLAIMER, out, cwd=os.getcwd()))
                # until it waits for this claim, or has claimed the folder itself (what the old code let it)
                wait_while_running(started[0], lambda: os.path.exists(os.path.join(out, outputs.RUN_MARKER)))
            return found
        return read

    monkeypatch.setattr(output, "read_run_marker", read_then_the_other_claims(output.read_run_marker))
    output.claim(out)
    status, error = json_answer(started[0])
    assert status == "refused", error
    assert str(os.getpid()) in error
    marker = json.loads(open(os.path.join(out, outputs.RUN_MARKER)).read())
    assert marker["pid"] == os.getpid()
    output.release(out)
    assert not os.path.exists(os.path.join(out, outputs.RUN_MARKER))
