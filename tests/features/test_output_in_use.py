"""A second ``lait features`` run into an output whose run (of the same part) is still going. It checked which shards
were complete, then removed the files of the others as a killed run's (``_remove_partial_shards``): the shards the
first run finished meanwhile went, and its ``stats.json`` counted rows no longer on disk (reproduced with a slow
check: 600 kept, 416 rows left). Such a run is refused now, before anything in the folder changes; once the first
run's process is gone, the folder resumes as before."""
import json
import os
import re

import pytest
import torch

import schemas
from model.detectors import demo
from pipeline import features, outputs
from pipeline.features import FeatureOptions, extract_regions, run_marker_name
from tests.features.scenes import CLASS_NAMES, encode, make_scene, write_pairs

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times are read from /proc")
SMALL = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]}


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    torch.manual_seed(0)
    return demo.save(demo.build(SMALL, CLASS_NAMES), str(tmp_path_factory.mktemp("weights") / "demo.safetensors"))


def _options(weights):
    return FeatureOptions(detector="demo", weights=weights, num_workers=0, batch_size=2, min_boxes=2, max_boxes=4,
                          images_per_shard=1)


def _snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_a_run_still_going_is_refused_and_resumed_once_its_process_is_gone(tmp_path, demo_weights, sleeper, capsys):
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(4)], duplicate_first=False)
    out = tmp_path / "out"
    extract_regions(str(tmp_path / "in"), str(out), _options(demo_weights))
    # The run as it is while it writes shard 3: its regions written, its stats file (which marks it complete) not yet
    (out / "stats.json").unlink()
    (out / "shards" / "part-00003.json").unlink()
    (out / run_marker_name(0)).write_text(json.dumps(outputs.run_marker("features", pid=sleeper.pid)))
    before = _snapshot(out)
    message = (rf"{out} is in use by a features run still going \(pid {sleeper.pid} on host .*\); wait for it to end "
               rf"or stop it, or use a new --output")
    with pytest.raises(ValueError, match=f"^{message}$"):
        extract_regions(str(tmp_path / "in"), str(out), _options(demo_weights))
    assert cli.main(["features", "--input", str(tmp_path / "in"), "--output", str(out), "--detector", "demo",
                     "--weights", demo_weights, "--device", "cpu", "--num-workers", "0", "--no-progress"]) == 2
    assert re.fullmatch(f"lait features: error: {message}\n", capsys.readouterr().err)
    assert _snapshot(out) == before  # shard 3's regions were removed as a killed run's

    # Once it has ended, the folder is an interrupted run's, resumed as before; the marker goes with the run
    sleeper.kill()
    sleeper.wait()
    stats = extract_regions(str(tmp_path / "in"), str(out), _options(demo_weights))
    assert (stats["shards_resumed"], stats["images_processed"], stats["in"], stats["kept"]) == (3, 1, 4, 4)
    assert schemas.count_rows(str(out / "regions")) == 4
    assert sorted(os.listdir(out)) == ["classes.json", "regions", "rejected", "run.json", "shards", "stats.json"]


def test_each_part_marks_its_own_run(tmp_path, sleeper):
    """The parts of one run go at once: a part still going refuses a second run of that part only."""
    out = tmp_path / "out"
    out.mkdir()
    (out / run_marker_name(1)).write_text(json.dumps(outputs.run_marker("features", pid=sleeper.pid)))
    mine = features._claim_output(str(out), 0, 2)
    assert json.loads(open(mine).read())["pid"] == os.getpid()
    with pytest.raises(ValueError, match=r"in use by a features run of --part 1/2 still going"):
        features._claim_output(str(out), 1, 2)
    elsewhere = dict(outputs.run_marker("features", pid=sleeper.pid), host="elsewhere.example")
    (out / run_marker_name(1)).write_text(json.dumps(elsewhere))
    with pytest.raises(ValueError, match=rf"started on another host .* remove {out / run_marker_name(1)}$"):
        features._claim_output(str(out), 1, 2)
    features._release_output(mine)
    assert sorted(os.listdir(out)) == [run_marker_name(1)]
