"""Claiming an output folder, across both forms of the features stage: ``lait features`` (``_claim_output``, its
``_run.started.part-I.json``) and ``python -m pipeline.features`` (``pipeline.outputs.prepare_output``, its
``_run.started.json``). A run of either form still going refuses a run of the other; two runs that claim at once
take turns (``pipeline.outputs.claim_lock``), so a marker written after a run read the folder is never removed as
an ended run's; the Beam form never overwrites a ``run.json`` it did not write; and an ``image_id`` that is not
UTF-8 stops the Beam form in one line, before the output is touched, as it stops ``lait features``."""
import json
import os
import select
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import features, features_beam, outputs
from pipeline.features import main as beam_main
from pipeline.features import run_marker_name
from tests.features.scenes import encode, make_scene, write_pairs
from tests.features.test_features_user_mistakes import BEAM, _features, _one_line
from tests.procs import waiting_for_a_lock

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times are read from /proc")
BEAM_ERROR = "python -m pipeline.features: error: "
SIZES = ["--min-size", "32", "--max-size", "48", "--fixed-boxes", "2", "--score-thresh", "0"]


def _snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def _beam(input_dir, output_dir) -> int:
    return beam_main(["--input", str(input_dir), "--output", str(output_dir), *BEAM, *SIZES])


# ---- a run of one form refuses an output a run of the other form is using ------------------------------------------

def test_lait_features_refuses_an_output_a_beam_run_is_using(tmp_path, sleeper, capsys):
    """The Beam form marks the folder (``_run.started.json``) and writes its run.json a moment later: lait features
    started in between read only its own part markers, took the folder, and every image ended up twice in regions/."""
    write_pairs(tmp_path / "in", [encode(make_scene(i, (40, 32))[0]) for i in range(2)], duplicate_first=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.RUN_MARKER).write_text(json.dumps(outputs.run_marker("features", pid=sleeper.pid)))
    before = _snapshot(out)
    assert _features(tmp_path / "in", out) == 2
    line = _one_line(capsys)
    assert line.startswith(f"lait features: error: {out} is in use by a features run of the Beam form "
                           f"(python -m pipeline.features) still going (pid {sleeper.pid} on host "), line
    assert line.endswith("wait for it to end or stop it, or use a new --output")
    assert _snapshot(out) == before

    sleeper.kill()  # once it has ended (killed before its run.json), the folder is lait features' to use
    sleeper.wait()
    assert _features(tmp_path / "in", out) == 0
    assert json.loads((out / "stats.json").read_text())["kept"] == 2


def test_the_beam_form_says_a_lait_features_run_is_using_the_output(tmp_path, sleeper, capsys):
    """A lait features run still going (its part marker names a live process) was refused, but in words meant for
    another tool's datasets: "no features run, finished or interrupted ...; ... or remove them", a live run's files."""
    write_pairs(tmp_path / "in", [encode(make_scene(i, (40, 32))[0]) for i in range(3)], duplicate_first=False)
    out = tmp_path / "out"
    assert _features(tmp_path / "in", out, "--images-per-shard", "1") == 0
    (out / "stats.json").unlink()  # as while it computes its last shard
    (out / "shards" / "part-00002.json").unlink()
    (out / run_marker_name(0)).write_text(json.dumps(outputs.run_marker("features", pid=sleeper.pid)))
    capsys.readouterr()
    before = _snapshot(out)
    assert _beam(tmp_path / "in", out) == 2
    line = _one_line(capsys, BEAM_ERROR)
    assert line.startswith(f"{BEAM_ERROR}{out} is in use by a lait features run still going (pid {sleeper.pid} "), line
    assert line.endswith("wait for it to end or stop it, or use a new --output") and "remove them" not in line
    assert _snapshot(out) == before


def test_the_beam_form_finds_a_lait_features_run_on_an_object_store(object_store, sleeper):
    """On an object store (no folders, no locks) the part markers are found by name, and the claim refused alike."""
    from tests.objectstore import PREFIX

    (object_store / "out").mkdir()
    (object_store / "out" / run_marker_name(1)).write_text(json.dumps(outputs.run_marker("features", pid=sleeper.pid)))
    (object_store / "out" / "run.json").write_text("{}")
    with pytest.raises(outputs.OutputExistsError, match=rf"^{PREFIX}out is in use by a lait features run still going "
                                                         rf"\(pid {sleeper.pid} "):
        features_beam.prepare_beam_output(PREFIX + "out", str(object_store / "in"))
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(outputs.OutputExistsError, match="holds run.json but no features run"):  # an ended run's
        features_beam.prepare_beam_output(PREFIX + "out", str(object_store / "in"))


# ---- two claims at once take turns ----------------------------------------------------------------------------------

#: Another process that claims folders: ``lait features``' claim (part 0 of 1) or the Beam form's, one per request
#: line (JSON: output, dataset, form), answered with a line (JSON: "claimed" or "refused", and the error). One process
#: for all the tests: importing the stage takes seconds.
CLAIMER = textwrap.dedent("""
    import json, sys
    from pipeline import features, features_beam
    for line in sys.stdin:
        output, dataset, form = json.loads(line)
        try:
            if form == "local":
                features._claim_output(output, 0, 1)
            else:
                features_beam.prepare_beam_output(output, dataset)
            print(json.dumps(["claimed", ""]), flush=True)
        except ValueError as exc:
            print(json.dumps(["refused", str(exc)]), flush=True)
""")


@pytest.fixture(scope="module")
def claimer():
    process = subprocess.Popen([sys.executable, "-c", CLAIMER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=os.getcwd())
    yield process
    process.kill()
    process.wait()


def _answer(process) -> list[str]:
    ready, _, _ = select.select([process.stdout], [], [], 180)
    assert ready, "the other claim never answered"
    return json.loads(process.stdout.readline())


def _claim(form: str, output: str, dataset: str) -> None:
    if form == "local":
        features._claim_output(output, 0, 1)
    else:
        features_beam.prepare_beam_output(output, dataset)


@pytest.mark.parametrize("first, second", [("local", "local"), ("beam", "beam"), ("beam", "local"),
                                           ("local", "beam")])
def test_a_claim_made_while_another_reads_the_folder_is_refused(tmp_path, monkeypatch, claimer, first, second):
    """The claims read the folder's markers, removed what they judged an ended run's marker, then wrote their own:
    a run that claimed the folder between the read and the removal lost its live marker, and both ran (and across
    the forms each read only its own form's markers). Here the second claim starts while the first has read the
    markers and not yet written its own: it waits, then finds the first's run going, and is refused."""
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])], duplicate_first=False)
    out, dataset = str(tmp_path / "out"), str(tmp_path / "in")
    asked = []

    def read_then_the_other_claims(real):
        def read(*args, **kwargs):
            found = real(*args, **kwargs)
            if not asked:
                asked.append(True)
                claimer.stdin.write(json.dumps([out, dataset, second]) + "\n")
                claimer.stdin.flush()
                deadline = time.monotonic() + 180
                # until it waits for this claim, or has claimed the folder itself (what the old code let it)
                while time.monotonic() < deadline and not waiting_for_a_lock(claimer.pid) \
                        and not any(name.startswith("_run.started") for name in os.listdir(out)):
                    time.sleep(0.02)
            return found
        return read

    if first == "local":
        monkeypatch.setattr(features, "_read_marker", read_then_the_other_claims(features._read_marker))
    else:
        monkeypatch.setattr(outputs, "read_run_marker", read_then_the_other_claims(outputs.read_run_marker))
    os.makedirs(out)
    _claim(first, out, dataset)
    status, err = _answer(claimer)
    assert status == "refused", err
    what = "a features run of the Beam form (python -m pipeline.features)" if first == "beam" and second == "local" \
        else "a lait features run" if first == "local" and second == "beam" else "a features run"
    assert err.startswith(f"{out} is in use by {what} still going (pid {os.getpid()} on host "), err
    mine = os.path.join(out, run_marker_name(0) if first == "local" else outputs.RUN_MARKER)
    assert json.loads(open(mine).read())["pid"] == os.getpid()
    assert [name for name in os.listdir(out) if name.startswith("_run.started")] == [os.path.basename(mine)]


# ---- the Beam form's run.json --------------------------------------------------------------------------------------

def test_the_beam_form_never_overwrites_a_run_json_it_did_not_write(tmp_path, monkeypatch):
    """The Beam form wrote its run.json over whatever was there: a run.json another run wrote after this one
    prepared the folder was replaced, and that run's shards were then read as the Beam run's."""
    write_pairs(tmp_path / "in", [encode(make_scene(0, (40, 32))[0])], duplicate_first=False)
    out = tmp_path / "out"
    theirs = {"detector": "demo", "parts": 1}
    real = features_beam.prepare_output

    def prepared_then_another_run_writes(*args, **kwargs):
        real(*args, **kwargs)
        (out / "run.json").write_text(json.dumps(theirs))

    monkeypatch.setattr(features_beam, "prepare_output", prepared_then_another_run_writes)
    with pytest.raises(ValueError, match=rf"^{out} is in use by another features run that started there just now "
                                         rf"\(it wrote {out / 'run.json'}\); use a new --output$"):
        features_beam.run(["--input", str(tmp_path / "in"), "--output", str(out), *BEAM, *SIZES])
    assert json.loads((out / "run.json").read_text()) == theirs
    assert sorted(os.listdir(out)) == ["run.json"]  # its own marker gone with it


# ---- an image_id that is not UTF-8 ------------------------------------------------------------------------------

def _bad_utf8(folder) -> str:
    """A dataset whose second image_id holds a byte that is not UTF-8 (Arrow does not check it on write)."""
    ids = pa.array([b"ok1", b"bad\xff", b"ok2"], pa.binary())
    folder.mkdir(parents=True)
    path = str(folder / "part-00000.parquet")
    pq.write_table(pa.table({"image_id": pa.Array.from_buffers(pa.string(), len(ids), ids.buffers()),
                             "image_bytes": pa.array([encode(make_scene(i, (40, 32))[0]) for i in range(3)])}), path)
    return path


def test_the_beam_form_stops_on_an_image_id_that_is_not_utf8_as_lait_features_does(tmp_path, capsys):
    """The Beam form failed in its workers (a 15-line traceback, a UnicodeDecodeError naming neither file nor
    column) and left a half-written output; lait features stops in one line before the output is touched."""
    path = _bad_utf8(tmp_path / "in")
    why = f"{path}: row group 0: column 'image_id' holds text that is not valid UTF-8"
    assert _features(tmp_path / "in", tmp_path / "local") == 2
    assert _one_line(capsys) == f"lait features: error: {why}"
    assert _beam(tmp_path / "in", tmp_path / "beam") == 2
    assert _one_line(capsys, BEAM_ERROR) == f"{BEAM_ERROR}{why}"
    assert not (tmp_path / "local").exists() and not (tmp_path / "beam").exists()


def test_a_beam_worker_names_the_file_and_row_group_of_an_image_id_that_is_not_utf8(tmp_path):
    """A runner that is not local reads the ids in its workers only: there too the error names what is wrong."""
    path = _bad_utf8(tmp_path / "in")
    with pytest.raises(ValueError, match=rf"^{path}: row group 0: column 'image_id' holds text that is not valid "
                                         rf"UTF-8$"):
        list(features_beam.ReadRowGroupsFn(str(tmp_path / "in")).process((path, 0)))
