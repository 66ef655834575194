"""`lait relevance train|eval|score` as a user runs them."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import schemas
from lait import cli
from tests.relevance.conftest import write_pairs
from tests.relevance.scenes import make_pairs


def test_train_then_eval_from_the_command_line(tmp_path, cli_env, heldout_rows, capsys):
    """`python -m lait relevance train`, then `lait relevance eval` of its model. The eval runs in this process
    (``cli.main``, all that ``python -m lait`` runs): a second interpreter importing torch cost seconds."""
    rows = make_pairs(8, seed=7)
    write_pairs(rows, str(tmp_path / "filter" / "pairs"))
    out = subprocess.run(
        [sys.executable, "-m", "lait", "relevance", "train", "--input", str(tmp_path / "filter"),
         "--out", str(tmp_path / "model"), "--epochs", "1", "--batch-size", "16", "--members", "1"],
        env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "relevance model written to" in out.stdout
    assert json.loads(out.stdout.split("\n", 1)[1])["trained_on"] > 0
    assert (tmp_path / "model" / "model.safetensors").exists()

    write_pairs(heldout_rows[:40], str(tmp_path / "labelled"), labelled=True)
    code = cli.main(["relevance", "eval", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "labelled"),
                     "--json-out", str(tmp_path / "eval" / "relevance_eval.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = json.loads((tmp_path / "eval" / "relevance_eval.json").read_text())
    assert json.loads(out) == written
    for key in ("auc", "true_kept", "mismatched_removed", "mismatch_precision", "mismatch_recall", "threshold"):
        assert key in written
    assert written["pairs"] == 40 and written["mismatches"] == sum(not r["is_match"] for r in heldout_rows[:40])


def test_eval_without_labels_is_a_clear_error(tmp_path, model_dir, heldout_rows, capsys):
    write_pairs(heldout_rows[:5], str(tmp_path / "unlabelled"))
    assert cli.main(["relevance", "eval", "--model", model_dir, "--input", str(tmp_path / "unlabelled")]) == 2
    assert "missing column(s) ['is_match']" in capsys.readouterr().err
    assert cli.main(["relevance", "train", "--input", str(tmp_path / "absent"), "--out", str(tmp_path / "m")]) == 2
    assert "no dataset at" in capsys.readouterr().err


def test_score_command_with_keep_rate(tmp_path, model_dir, heldout_rows, capsys):
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in heldout_rows[:30]]
    write_pairs(rows, str(tmp_path / "pairs"))
    assert cli.main(["relevance", "score", "--input", str(tmp_path / "pairs"), "--output", str(tmp_path / "rel"),
                     "--model", model_dir, "--keep-rate", "0.5"]) == 0
    stats = json.loads((tmp_path / "rel" / "stats.json").read_text())
    assert f"kept {stats['kept']} of 30 pairs" in capsys.readouterr().out
    assert stats["relevance"]["requested_keep_rate"] == 0.5
    assert stats["kept"] in (15, 16)  # the median of 30 scores lies between two of them
    assert schemas.count_rows(str(tmp_path / "rel" / "pairs"), "pairs") == stats["kept"]


def _spawned_children(pid: int) -> int:
    """How many multiprocessing spawn children ``pid`` runs (from /proc: their command line)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            kids = handle.read().split()
    except OSError:
        return 0
    found = 0
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as handle:
                found += b"multiprocessing" in handle.read()
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
def test_ctrl_c_while_members_train_in_processes_is_one_line(tmp_path, cli_env):
    """Ctrl-C (SIGINT to the group) as the member processes start: `lait relevance train` ends them and says one
    line. Before, each member still importing printed a KeyboardInterrupt traceback."""
    write_pairs(make_pairs(8, seed=7), str(tmp_path / "filter" / "pairs"))
    process = subprocess.Popen(
        [sys.executable, "-m", "lait", "relevance", "train", "--input", str(tmp_path / "filter"),
         "--out", str(tmp_path / "model"), "--epochs", "50", "--batch-size", "16", "--members", "2",
         "--processes", "2"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _spawned_children(process.pid) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # while they import torch (a second or more): where a member's KeyboardInterrupt went unhandled
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert not (tmp_path / "model").exists()
