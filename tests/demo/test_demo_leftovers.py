"""Two demo leftovers: the demo detector's weights read by their bytes, not their name (as the other detectors'
are, ``model.detectors.weights.weights_format``), and `lait demo --from` refusing a folder that is no demo run."""
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from model.detectors import build_detector, demo, feature_dim_of
from tests.inprocess import lait_here

TINY = {"min_size": 64, "max_size": 96, "channels": [8, 8, 8, 8, 8, 8], "feature_dim": 32}


@pytest.fixture
def demo_weights(tmp_path):
    """A tiny demo detector saved by ``demo.save`` (weights with the config in their metadata, the config as JSON
    beside them), in a folder of its own."""
    torch.manual_seed(0)
    return demo.save(demo.build(TINY, ["a", "b"]), str(tmp_path / "saved" / "tiny.safetensors"))


def _same_weights(detector, path):
    expected = load_file(path)
    state = detector.model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[name], expected[name]) for name in expected)


def test_demo_weights_are_read_by_their_bytes_whatever_their_name(tmp_path, demo_weights):
    """A safetensors file named `x.pt` went to torch.load and, without the JSON beside it, was refused as having no
    config (its metadata holds one): it loads now, as the other detectors' weights do."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("renamed.pt", "renamed.pth", "renamed.bin"):  # its metadata is its config: no JSON beside it
        path = shutil.copy(demo_weights, other / name)
        assert feature_dim_of("demo", path) == 32, path
        detector = build_detector("demo", weights=path)
        assert detector.class_names == ["a", "b"] and detector.spec.min_size == 64, path
        _same_weights(detector, demo_weights)
        _same_weights(demo.load(path), demo_weights)


def test_a_torch_checkpoint_named_safetensors_loads(tmp_path, demo_weights):
    """A torch zip named `x.safetensors` (its config as the JSON beside it) is read as torch's by its bytes. torch 2.14's
    own ``torch.load`` reads any path named `.safetensors` as safetensors: the shared loader
    (``model.detectors.weights.load_state``) hands it an open file instead."""
    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.save(load_file(demo_weights), checkpoint)
    shutil.copy(os.path.splitext(demo_weights)[0] + ".json", tmp_path / "checkpoint.json")
    assert feature_dim_of("demo", str(checkpoint)) == 32  # the config beside it, not the file's (absent) metadata
    _same_weights(build_detector("demo", weights=str(checkpoint)), demo_weights)


def test_an_empty_or_cut_demo_weights_file_is_one_line_naming_it(tmp_path, demo_weights):
    """Whatever its name: an empty `x.pt` was refused as having no config ("neither safetensors metadata nor
    x.json"), not as the empty file it is; a cut file is one line through the CLI, exit status 2, nothing written."""
    from tests.features.scenes import encode, make_scene, write_pairs

    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    data = open(demo_weights, "rb").read()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # a safetensors file cut short, named as torch's:
    checkpoint = tmp_path / "zip.safetensors"
    torch.save(load_file(demo_weights), checkpoint)
    (tmp_path / "cutzip.safetensors").write_bytes(checkpoint.read_bytes()[:2000])  # a torch zip cut short
    shutil.copy(os.path.splitext(demo_weights)[0] + ".json", tmp_path / "cutzip.json")
    for name, said in (("empty.pt", "the file is empty"), ("empty.safetensors", "the file is empty"),
                       ("cut.pt", "SafetensorError"),  # read as what its bytes say it is
                       ("cutzip.safetensors", "")):
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=f"^{path}: not a readable weights file: .*"):
            demo.load(path)  # the loader's own error: a ValueError naming the file
        result = lait_here("features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--detector", "demo", "--weights", path, "--device", "cpu", "--no-progress", check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"lait features: error: {path}: not a readable weights file: "), result.stderr
        assert result.stderr.count("\n") == 1 and said in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("start", ["crawl", "features", "train"])
def test_from_into_a_folder_that_is_no_demo_run_is_refused(tmp_path, start):
    """`lait demo --out X` refused a folder of other files, but `--from STEP --out X` did not check it: a run from
    `features` (or before) removed the user's `features/`, as "stale outputs of an earlier run"."""
    folder = tmp_path / "mine"
    (folder / "features").mkdir(parents=True)
    mine = folder / "features" / "mine.parquet"
    mine.write_bytes(b"PAR1 the user's own bytes PAR1")
    before = sorted(os.listdir(folder))
    result = lait_here("demo", "--out", str(folder), "--from", start, "--stop-after", "eval", "--scenes", "5",
                       "--test-scenes", "2", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"lait demo: error: --out {folder} holds files and is not a lait demo run "
                                    f"folder"), result.stderr
    assert f"--from {start}" in result.stderr
    assert mine.read_bytes() == b"PAR1 the user's own bytes PAR1" and sorted(os.listdir(folder)) == before
    assert result.stdout == ""  # refused before any step (not even the site) began


def test_from_into_a_demo_run_or_a_new_folder_is_still_checked_as_before(tmp_path):
    """A folder a demo run made (its demo.json) passes the new check, and so do a new folder and an empty one
    (their steps before --from are `missing`): each reaches the checks that follow (here: --dry-run)."""
    from demo.run import Demo, DemoConfig

    run = tmp_path / "run"
    Demo(DemoConfig(out=str(run)), echo=lambda _: None).write_log()  # what a run writes first
    (run / "features").mkdir()
    (run / "features" / "part-00000.parquet").write_bytes(b"an earlier run's")
    (tmp_path / "empty").mkdir()
    for folder in (run, tmp_path / "empty", tmp_path / "new"):
        result = lait_here("demo", "--out", str(folder), "--from", "features", "--dry-run", check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("site ") and "(not run: before --from features" in result.stdout
    assert (run / "features" / "part-00000.parquet").read_bytes() == b"an earlier run's"
