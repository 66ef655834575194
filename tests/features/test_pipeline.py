"""The local features runner end to end: books, schema, resume, OOM split, input forms, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import schemas
from model.detectors import demo
from pipeline.features import FeatureOptions, extract_regions
from tests.features.scenes import CLASS_NAMES, encode, image_id, make_scene, write_pairs
from tests.torchrun import torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]}


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    torch.manual_seed(0)
    return demo.save(demo.build(SMALL, CLASS_NAMES), str(tmp_path_factory.mktemp("weights") / "demo.safetensors"))


def _options(weights, **kw):
    base = dict(detector="demo", weights=weights, num_workers=0, batch_size=2, min_boxes=2, max_boxes=6)
    return FeatureOptions(**{**base, **kw})


def _rotated_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(make_scene(99, (120, 80))[0], "JPEG", quality=90, exif=exif.tobytes())


def test_end_to_end_books_schema_and_classes(tmp_path, demo_weights):
    images = [encode(make_scene(i, (96 + 8 * i, 72))[0]) for i in range(4)] + [_rotated_jpeg(), b"not an image", b""]
    ids = write_pairs(tmp_path / "filter", images)  # the first image appears twice
    stats = extract_regions(str(tmp_path / "filter"), str(tmp_path / "features"), _options(demo_weights, num_workers=1))
    assert (stats["in"], stats["kept"], stats["rejected"]) == (7, 5, 2)
    assert stats["rejected_by_reason"] == {"image_undecodable": 1, "image_missing": 1}
    on_disk = json.loads((tmp_path / "features" / "stats.json").read_text())
    assert on_disk["in"] == on_disk["kept"] + on_disk["rejected"] and on_disk["stage"] == "features"
    assert on_disk["input"] == "filter"  # as filter and relevance name theirs: relative to the run folder

    regions = schemas.read_table(str(tmp_path / "features" / "regions"), "regions")
    assert regions.schema.field("features").type.value_type.list_size == 256
    rows = {r["image_id"]: r for r in regions.to_pylist()}
    assert set(rows) == set(ids[:5]) and len(rows) == regions.num_rows  # each distinct image once
    for r in rows.values():
        assert 2 <= r["num_boxes"] <= 6
        assert len(r["boxes"]) == len(r["features"]) == len(r["class_ids"]) == len(r["topk_class_ids"]) == r["num_boxes"]
        boxes = np.array(r["boxes"])
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= r["image_width"]).all() and (boxes[:, 3] <= r["image_height"]).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and r["detector"] == "demo"
        probs = np.array(r["topk_class_probs"])
        assert (np.diff(probs, axis=1) <= 0).all() and probs.sum(axis=1).max() <= 1 + 1e-5
        assert r["class_ids"] == [t[0] for t in r["topk_class_ids"]]
    assert (rows[ids[0]]["image_width"], rows[ids[0]]["image_height"]) == (96, 72)
    assert (rows[ids[4]]["image_width"], rows[ids[4]]["image_height"]) == (80, 120)  # EXIF-rotated, oriented size

    rejected = schemas.read_table(str(tmp_path / "features" / "rejected"), "rejected").to_pylist()
    assert {r["stage"] for r in rejected} == {"features"} and {r["image_id"] for r in rejected} == set(ids[5:7])
    classes = json.loads((tmp_path / "features" / "classes.json").read_text())
    assert classes["class_names"] == CLASS_NAMES and classes["feature_dim"] == 256


class _Interrupting:
    """The real detector, interrupted on its n-th batch (a killed run)."""

    def __init__(self, inner, fail_on_call):
        self.inner, self.fail_on_call, self.calls = inner, fail_on_call, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, images, selection, topk):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return self.inner(images, selection, topk)


def test_resume_after_interrupted_run_matches_a_clean_run(tmp_path, demo_weights):
    images = [encode(make_scene(i)[0]) for i in range(6)]
    write_pairs(tmp_path / "in", images, duplicate_first=False, row_group_size=2)
    options = _options(demo_weights, images_per_shard=2)
    detector = options.load_detector()
    with pytest.raises(KeyboardInterrupt):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options, detector=_Interrupting(detector, 2))
    assert len(os.listdir(tmp_path / "out" / "shards")) == 1  # shard 0 complete, shard 1 absent
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    assert stats["shards_resumed"] == 1 and stats["images_processed"] == 4
    assert (stats["in"], stats["kept"], stats["shards"]) == (6, 6, 3)
    clean = extract_regions(str(tmp_path / "in"), str(tmp_path / "clean"), options)
    assert clean["shards_resumed"] == 0
    resumed = schemas.read_table(str(tmp_path / "out" / "regions"), "regions").sort_by("image_id")
    fresh = schemas.read_table(str(tmp_path / "clean" / "regions"), "regions").sort_by("image_id")
    assert resumed.num_rows == 6 and resumed.column("boxes").to_pylist() == fresh.column("boxes").to_pylist()
    other = _options(demo_weights, images_per_shard=2, max_boxes=9)
    with pytest.raises(ValueError, match="other settings"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), other)


def test_parts_split_the_shards_and_the_part_that_completes_the_run_writes_the_books(tmp_path, demo_weights):
    images = [encode(make_scene(i)[0]) for i in range(6)]
    write_pairs(tmp_path / "in", images, duplicate_first=False, row_group_size=2)
    with pytest.raises(ValueError, match="part 2 of 2"):
        _options(demo_weights, part=2, parts=2)
    first = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=2,
                                                                                   part=1, parts=2))
    assert not first["complete"] and (first["in"], first["kept"], first["images_processed"]) == (2, 2, 2)
    assert sorted(os.listdir(tmp_path / "out" / "shards")) == ["part-00001.json"]
    assert not (tmp_path / "out" / "stats.json").exists(), "the run is not complete: no books yet"
    last = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=2,
                                                                                  part=0, parts=2))
    assert last["complete"] and (last["in"], last["kept"], last["shards"], last["images_processed"]) == (6, 6, 3, 4)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["in"] == 6
    clean = extract_regions(str(tmp_path / "in"), str(tmp_path / "clean"), _options(demo_weights, images_per_shard=2))
    assert clean["complete"] and clean["parts"] == 1
    parted = schemas.read_table(str(tmp_path / "out" / "regions"), "regions").sort_by("image_id")
    alone = schemas.read_table(str(tmp_path / "clean" / "regions"), "regions").sort_by("image_id")
    assert parted.num_rows == 6 and parted.column("boxes").to_pylist() == alone.column("boxes").to_pylist()


def test_torchrun_processes_each_run_their_part(tmp_path, demo_weights, capsys):
    from lait import cli

    write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(4)], duplicate_first=False)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    args = ["-m", "lait", "-v", "features", "--input", str(tmp_path / "filter"), "--output", str(tmp_path / "out"),
            "--detector", "demo", "--weights", demo_weights, "--device", "cpu", "--num-workers", "0",
            "--images-per-shard", "1", "--no-progress"]
    done = subprocess.run([*torchrun(2), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "part 0 of 2: 2 of the 4 shards" in done.stderr and "part 1 of 2: 2 of the 4 shards" in done.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["in"], stats["kept"], stats["shards"], stats["parts"]) == (4, 4, 4, 2)
    with pytest.raises(SystemExit) as bad:  # the command line's own refusal: no process of its own needed
        cli.main([*args[2:], "--part", "2/2"])
    assert bad.value.code == 2 and "I must be 0 to N-1" in capsys.readouterr().err


class _SmallMemory:
    """The real detector on a device that fits two images per batch, and never the image ``too_big``."""

    def __init__(self, inner, too_big_width):
        self.inner, self.too_big_width, self.batch_sizes = inner, too_big_width, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, images, selection, topk):
        self.batch_sizes.append(len(images))
        if len(images) > 2 or any(im.shape[2] == self.too_big_width for im in images):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(images, selection, topk)


def test_out_of_memory_batches_are_split_not_lost(tmp_path, demo_weights):
    images = [encode(make_scene(i, (96, 72))[0]) for i in range(5)] + [encode(make_scene(9, (200, 72))[0])]
    write_pairs(tmp_path / "in", images, duplicate_first=False)
    options = _options(demo_weights, batch_size=6)
    detector = _SmallMemory(options.load_detector(), too_big_width=options.load_detector().spec.input_size(200, 72)[0])
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options, detector=detector)
    assert (stats["in"], stats["kept"], stats["rejected_by_reason"]) == (6, 5, {"out_of_memory": 1})
    assert detector.batch_sizes[0] == 6 and max(detector.batch_sizes[1:]) <= 3


def test_crawl_folder_input_and_bad_tables(tmp_path, demo_weights):
    data = encode(make_scene(3)[0])
    row = {"candidate_id": "c1", "image_id": image_id(data), "page_url": "http://127.0.0.1/p", "image_url": "http://127.0.0.1/i.png",
           "image_bytes": data, "source": "crawl"}
    schemas.write_table(schemas.to_table([row], "candidates"), str(tmp_path / "crawl" / "candidates" / "part-00000.parquet"))
    stats = extract_regions(str(tmp_path / "crawl"), str(tmp_path / "f1"), _options(demo_weights))
    assert (stats["in"], stats["kept"]) == (1, 1)
    bad = schemas.to_table([{"caption_id": "k", "image_id": "i", "caption": "c"}], "captions")
    schemas.write_table(bad, str(tmp_path / "captions" / "part-00000.parquet"))
    with pytest.raises(schemas.SchemaMismatchError, match="image_bytes"):
        extract_regions(str(tmp_path / "captions"), str(tmp_path / "f2"), _options(demo_weights))


def _crawl_without_candidates(folder, kept=0, stage="crawl"):
    """A finished crawl folder as crawls that kept nothing wrote it before they always wrote
    ``candidates/part-empty.parquet``: rejected/ and stats.json, no candidates/."""
    row = schemas.rejected_row("crawl", "image_too_small", "300x200", page_url="http://127.0.0.1/p0.html",
                               image_url="http://127.0.0.1/img/0.jpg", candidate_id="c0")
    schemas.write_table(schemas.to_table([row], "rejected"), str(folder / "rejected" / "part-00000.parquet"), "rejected")
    (folder / "stats.json").write_text(json.dumps({"stage": stage, "in": kept + 1, "kept": kept, "rejected": 1}))
    return folder


def test_an_older_empty_crawl_without_candidates_is_an_empty_run_as_an_empty_candidates_folder(
        tmp_path, demo_weights, capsys):
    """``lait features`` on a finished crawl that kept nothing and has no candidates/ (written before crawls always
    wrote one): the empty run an empty candidates/ gives, books and folders, never its rejected/ read as images."""
    from crawler import output
    from lait import cli

    old = _crawl_without_candidates(tmp_path / "old" / "crawl")
    output.ensure_candidates(str(_crawl_without_candidates(tmp_path / "new" / "crawl")))  # what crawls write now
    base = ["features", "--detector", "demo", "--weights", demo_weights, "--num-workers", "0", "--no-progress"]
    stats = {}
    for run in ("old", "new"):
        code = cli.main([*base, "--input", str(tmp_path / run / "crawl"), "--output", str(tmp_path / run / "features")])
        assert code == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["in"] == 0
        stats[run] = json.loads((tmp_path / run / "features" / "stats.json").read_text())
    books = ("stage", "input", "complete", "in", "kept", "rejected", "rejected_by_reason", "shards", "boxes_total",
             "boxes_per_image", "images_processed")
    assert {k: stats["old"][k] for k in books} == {k: stats["new"][k] for k in books}
    assert (stats["old"]["in"], stats["old"]["kept"], stats["old"]["rejected"], stats["old"]["input"]) == (0, 0, 0, "crawl")
    for sub in ("regions", "rejected"):
        assert schemas.count_rows(str(tmp_path / "old" / "features" / sub), sub) == 0
    with pytest.raises(ValueError, match="is inside the input"):  # where the candidates would be
        extract_regions(str(old), str(old / "candidates" / "features"), _options(demo_weights))
    assert not (old / "candidates").exists()  # the input is read, never written
    # a rerun into the finished output resumes: the same books
    assert cli.main([*base, "--input", str(old), "--output", str(tmp_path / "old" / "features")]) == 0
    assert json.loads(capsys.readouterr().out)["in"] == 0


def test_a_folder_without_candidates_that_is_no_finished_empty_crawl_is_still_an_error(tmp_path, demo_weights):
    """Only a finished crawl that kept nothing is an empty input: a crawl whose stats.json counts kept candidates
    (its candidates/ lost), another stage's folder, or one without a stats.json is an error, and no run starts."""
    cases = {
        "lost": (dict(kept=2), r"its stats\.json counts 2 kept candidates"),
        "other": (dict(stage="filter"), r"a run folder \(it holds rejected/\), not a dataset of images"),
    }
    for name, (kw, message) in cases.items():
        folder = _crawl_without_candidates(tmp_path / name / "crawl", **kw)
        with pytest.raises(FileNotFoundError, match=message):
            extract_regions(str(folder), str(tmp_path / name / "features"), _options(demo_weights))
        assert not (tmp_path / name / "features").exists()
    unfinished = _crawl_without_candidates(tmp_path / "unfinished" / "crawl")
    (unfinished / "stats.json").write_text('{"stage": "crawl", "kept": 0')  # half written
    with pytest.raises(FileNotFoundError, match=r"a run folder \(it holds rejected/\)"):
        extract_regions(str(unfinished), str(tmp_path / "unfinished" / "features"), _options(demo_weights))


def test_cli_runs_as_a_subprocess(tmp_path, demo_weights):
    write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(3)])
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}  # one thread, as the tests' own process
    base = [sys.executable, "-m", "lait", "features", "--input", str(tmp_path / "filter"), "--detector", "demo",
            "--num-workers", "1", "--no-progress"]
    done = subprocess.run(base + ["--output", str(tmp_path / "features"), "--weights", demo_weights, "--fixed-boxes", "4"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept"] == 3
    regions = schemas.read_table(str(tmp_path / "features" / "regions"), "regions")
    assert regions.column("num_boxes").to_pylist() == [4, 4, 4]

def test_cli_reports_missing_weights(tmp_path, capsys):
    from lait import cli

    write_pairs(tmp_path / "filter", [encode(make_scene(0)[0])])
    code = cli.main(["features", "--input", str(tmp_path / "filter"), "--output", str(tmp_path / "out"),
                     "--detector", "demo", "--no-progress"])
    assert code == 2 and "--weights" in capsys.readouterr().err


def test_fixed_boxes_with_min_or_max_boxes_is_refused_in_both_forms(tmp_path, demo_weights, capsys):
    """--fixed-boxes sets both box limits: --min-boxes or --max-boxes beside it, even at its default value, is a
    one-line error (it used to be overridden without a word), in ``lait features`` and ``python -m
    pipeline.features`` alike, before the output is made."""
    from lait import cli
    from pipeline.features import main as beam_main

    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--weights", demo_weights, "--fixed-boxes", "4"]
    for extra, given in ((["--min-boxes", "10"], "--min-boxes"), (["--max-boxes", "4"], "--max-boxes"),
                         (["--min-boxes", "2", "--max-boxes", "6"], "--min-boxes and --max-boxes")):
        message = f"--fixed-boxes 4 sets both box limits: leave out {given}\n"
        assert cli.main(["features", *base, *extra, "--num-workers", "0", "--no-progress"]) == 2
        assert capsys.readouterr().err == "lait features: error: " + message
        assert beam_main([*base, *extra, "--runner", "DirectRunner"]) == 2
        assert capsys.readouterr().err == "python -m pipeline.features: error: " + message
    assert not (tmp_path / "out").exists()


def test_download_weights_where_nothing_would_be_downloaded_is_refused(tmp_path, demo_weights, capsys):
    """--download-weights fetches the coco-* detectors' published weights: with another detector, --weights or
    --random-init it would be ignored, so it is refused in one line."""
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    base = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--download-weights",
            "--num-workers", "0", "--no-progress"]
    for extra, instead in ((["--detector", "demo", "--weights", demo_weights], "--weights"),
                           (["--detector", "coco-r50-fpn", "--weights", demo_weights], "--weights"),
                           (["--detector", "coco-r50-fpn", "--random-init"], "--random-init"),
                           (["--detector", "vg-r101-c4"], "--detector vg-r101-c4")):
        assert cli.main([*base, *extra]) == 2
        assert capsys.readouterr().err == (f"lait features: error: --download-weights fetches the published weights "
                                           f"of the coco-* detectors, which a run with {instead} does not read: "
                                           f"leave it out\n")
    assert not (tmp_path / "out").exists()


def test_device_decoding_keeps_the_same_books(tmp_path, demo_weights):
    """--decode device (torchvision's JPEG decoder on the detector's device; the CPU here) keeps every image."""
    images = [encode(make_scene(i, (120, 90))[0], "JPEG", quality=92) for i in range(3)]
    images += [encode(make_scene(7)[0]), _rotated_jpeg(), b"junk"]
    write_pairs(tmp_path / "filter", images)
    by_mode = {}
    for mode in ("workers", "device"):
        stats = extract_regions(str(tmp_path / "filter"), str(tmp_path / mode), _options(demo_weights, decode=mode, batch_size=4))
        rows = schemas.read_table(str(tmp_path / mode / "regions"), "regions").to_pylist()
        by_mode[mode] = (stats["in"], stats["kept"], stats["rejected_by_reason"],
                         sorted((r["image_id"], r["image_width"], r["image_height"]) for r in rows))
    assert by_mode["device"] == by_mode["workers"]
    assert by_mode["device"][:3] == (6, 5, {"image_undecodable": 1})


def test_device_decoding_runs_one_batch_ahead_in_a_background_thread(monkeypatch):
    """The next batch decodes while the caller detects this one; errors and early stops reach the caller."""
    import threading

    import pipeline.features as features

    log = []
    decoded_11 = threading.Event()

    def fake_decode(inputs, device):
        log.append(("decode", inputs[0].width, threading.current_thread().name))
        if inputs[0].width == 11:
            decoded_11.set()
        if inputs[0].width == 99:
            raise RuntimeError("decoder broke")
        for item in inputs:
            item.pixels = torch.zeros(3, item.height, item.width, dtype=torch.uint8)
        return [None] * len(inputs)

    monkeypatch.setattr(features, "decode_on_device", fake_decode)
    batches = [[features._Pending(0, f"{w}-{i}", _net_input(w, 8, decoded=False)) for i in range(2)] for w in (10, 11, 12)]
    for batch, errors, waited in features._decoded_ahead(iter(batches), torch.device("cpu"), enabled=True):
        assert all(item.input.pixels is not None for item in batch) and errors == [None, None] and waited >= 0
        if batch[0].input.width == 10:  # "detecting" the first batch: the second decodes meanwhile
            assert decoded_11.wait(timeout=30)
        log.append(("detect", batch[0].input.width, threading.current_thread().name))
    decodes = [entry for entry in log if entry[0] == "decode"]
    assert {name for _, _, name in decodes} == {"lait-features-decoder_0"}
    assert [width for kind, width, _ in log if kind == "detect"] == [10, 11, 12]

    broken = [[features._Pending(0, "x", _net_input(99, 8, decoded=False))]]
    with pytest.raises(RuntimeError, match="decoder broke"):
        list(features._decoded_ahead(iter(broken), torch.device("cpu"), enabled=True))

    log.clear()
    ahead = features._decoded_ahead(iter(batches), torch.device("cpu"), enabled=True)
    next(ahead)
    ahead.close()  # the caller stops early: the decoder thread is shut down, nothing more is decoded
    assert len([entry for entry in log if entry[0] == "decode"]) <= 2
    assert not any(t.name.startswith("lait-features-decoder") for t in threading.enumerate())

    plain = [[features._Pending(0, "p", _net_input(10, 8))]]
    assert list(features._decoded_ahead(iter(plain), torch.device("cpu"), enabled=False)) == [(plain[0], [None], 0.0)]


def test_decode_auto_is_the_device_on_cuda_and_the_workers_elsewhere():
    from pipeline.features import resolved_decode

    assert resolved_decode("auto", torch.device("cuda", 0)) == "device"
    assert resolved_decode("auto", torch.device("cpu")) == "workers"
    assert resolved_decode("workers", torch.device("cuda", 0)) == "workers"
    with pytest.raises(ValueError, match="decode"):
        resolved_decode("gpu", torch.device("cpu"))


def _net_input(width: int, height: int, decoded: bool = True):
    from model.detectors.images import DetectorInput

    if decoded:
        return DetectorInput(pixels=torch.zeros(3, height, width, dtype=torch.uint8), width=width, height=height)
    return DetectorInput(pixels=None, width=width, height=height, encoded=torch.zeros(4, dtype=torch.uint8),
                         target=(width, height))


def test_detector_batches_are_assembled_from_worker_pieces():
    from pipeline.features import DecodedBatch, _batches, piece_size

    assert [piece_size(b) for b in (1, 8, 16, 64, 256)] == [1, 8, 16, 16, 64]
    wide = _net_input(8, 6)
    pieces = [DecodedBatch(0, ["a", "b", "c"], [wide] * 3, [("x", "image_undecodable", "")]),
              DecodedBatch(1, ["d"], [wide], []),
              DecodedBatch(1, [], [], [("y", "image_missing", "")]),
              DecodedBatch(2, ["e", "f", "g"], [wide] * 3, [])]
    seen = []
    batches = list(_batches(iter(pieces), 3, seen.append))
    assert [[(p.shard, p.image_id) for p in b] for b in batches] == [
        [(0, "a"), (0, "b"), (0, "c")], [(1, "d"), (2, "e"), (2, "f")], [(2, "g")]]
    assert seen == pieces, "every piece, rejects included, is seen once, in order"


def test_landscape_and_portrait_images_go_in_separate_batches():
    """A batch pads to its widest and tallest image: orientations wait apart, a rare one not for long."""
    from pipeline.features import MAX_WAIT_BATCHES, DecodedBatch, _batches, is_portrait

    wide, tall = _net_input(10, 6), _net_input(6, 10, decoded=False)  # a device decode knows its target size
    assert not is_portrait(wide) and is_portrait(tall) and not is_portrait(_net_input(6, 6))
    kinds = "wtwtwwttww"
    pieces = [DecodedBatch(0, [f"{k}{i}" for i, k in enumerate(kinds[:5])], [wide if k == "w" else tall for k in kinds[:5]], []),
              DecodedBatch(1, [f"{k}{i}" for i, k in enumerate(kinds[5:], 5)], [wide if k == "w" else tall for k in kinds[5:]], [])]
    batches = [[p.image_id for p in b] for b in _batches(iter(pieces), 3, lambda piece: None)]
    assert batches == [["w0", "w2", "w4"], ["t1", "t3", "t6"], ["w5", "w8", "w9"], ["t7"]]
    assert sorted(i for b in batches for i in b) == sorted(f"{k}{i}" for i, k in enumerate(kinds))
    # One portrait among many landscape images: it goes out alone once MAX_WAIT_BATCHES batches' worth arrived.
    ids = ["t"] + [f"w{i}" for i in range(3 * MAX_WAIT_BATCHES + 3)]
    piece = DecodedBatch(0, ids, [tall] + [wide] * (len(ids) - 1), [])
    batches = [[p.image_id for p in b] for b in _batches(iter([piece]), 3, lambda piece: None)]
    # it is the first arrival; it leaves once MAX_WAIT_BATCHES x 3 images arrived, the landscape batches so far before it
    assert ["t"] in batches and batches.index(["t"]) == (MAX_WAIT_BATCHES * 3 - 1) // 3
    assert all(len(b) == 3 for b in batches if b != ["t"])


def test_images_are_batched_by_padded_shape():
    from pipeline.features import DecodedBatch, _batches, padded_shape

    a, b = _net_input(70, 64), _net_input(90, 64, decoded=False)  # widths pad to 96 and 96: one shape
    c, d = _net_input(100, 64), _net_input(64, 90)
    assert padded_shape(a, 32) == padded_shape(b, 32) == (64, 96)
    assert padded_shape(c, 32) == (64, 128) and padded_shape(d, 32) == (96, 64) and padded_shape(a, 1) == (64, 70)
    piece = DecodedBatch(0, ["a", "c", "b", "d", "a2"], [a, c, b, d, a], [])
    batches = [[p.image_id for p in batch] for batch in
               _batches(iter([piece]), 3, lambda piece: None, key=lambda item: padded_shape(item, 32))]
    assert batches == [["a", "b", "a2"], ["c"], ["d"]]


def test_regions_do_not_depend_on_batch_mates_or_order(tmp_path, demo_weights):
    """An image's regions are the same alone and in a batch with images of other sizes, in any input order."""
    # At 64/96 the wide ones pad to 64 x 96, the squares to 64 x 64 and the tall ones to 96 x 64: batched by
    # orientation alone, the squares shared the wide ones' padding and their boxes moved by up to 59 pixels
    # (the demo backbone's GroupNorm takes its statistics over the padded map).
    sizes = [(64 + i, 64 + i) if i % 2 else (88 + 3 * i, 64) for i in range(9)] + [(64, 100), (64, 110)]
    images = [encode(make_scene(i, size)[0]) for i, size in enumerate(sizes)]
    write_pairs(tmp_path / "forward", images, duplicate_first=False)
    write_pairs(tmp_path / "backward", images[::-1], duplicate_first=False)
    runs, stats = {}, {}
    for name, source, batch in (("alone", "forward", 1), ("batched", "backward", 4)):
        stats[name] = extract_regions(str(tmp_path / source), str(tmp_path / name), _options(demo_weights, batch_size=batch))
        table = schemas.read_table(str(tmp_path / name / "regions"), "regions")
        runs[name] = {row["image_id"]: row for row in table.to_pylist()}
    # stats.json tells how full the batches ran: 5 wide, 4 square and 2 tall images make 2 + 1 + 1 batches
    assert (stats["alone"]["batches"], stats["alone"]["mean_batch_size"]) == (len(sizes), 1.0)
    assert (stats["batched"]["batches"], stats["batched"]["mean_batch_size"]) == (4, 2.75)
    assert runs["alone"].keys() == runs["batched"].keys() and len(runs["alone"]) == len(sizes)
    for image, alone in runs["alone"].items():
        batched = runs["batched"][image]
        assert batched["num_boxes"] == alone["num_boxes"] and batched["class_ids"] == alone["class_ids"], image
        np.testing.assert_allclose(batched["boxes"], alone["boxes"], atol=1e-3)
        np.testing.assert_allclose(batched["features"], alone["features"], rtol=1e-2, atol=1e-3)


def test_batches_spanning_shards_keep_every_shard_whole(tmp_path, demo_weights):
    """Shards of 3 images, detector batches of 5 from 2 workers' pieces: each shard is written once, complete."""
    images = [encode(make_scene(i, (80 + 4 * i, 72))[0]) for i in range(10)] + [b"not an image"]
    write_pairs(tmp_path / "filter", images)
    options = _options(demo_weights, num_workers=2, batch_size=5, images_per_shard=3)
    stats = extract_regions(str(tmp_path / "filter"), str(tmp_path / "features"), options)
    assert (stats["in"], stats["kept"], stats["rejected"], stats["shards"]) == (11, 10, 1, 4)
    shard_stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "features" / "shards").glob("*.json"))]
    assert [s["in"] for s in shard_stats] == [3, 3, 3, 2]
    assert all(s["in"] == s["kept"] + s["rejected"] for s in shard_stats)
    regions = schemas.read_table(str(tmp_path / "features" / "regions"), "regions")
    assert regions.num_rows == 10 and len(set(regions.column("image_id").to_pylist())) == 10


def test_resume_refuses_an_output_of_other_images_or_another_shard_size(tmp_path, demo_weights):
    """A complete shard is skipped only when it was computed from the images the input gives it now."""
    scenes = [encode(make_scene(i)[0]) for i in range(8)]
    write_pairs(tmp_path / "a", scenes[:4], duplicate_first=False)
    write_pairs(tmp_path / "b", scenes[4:], duplicate_first=False)
    options = _options(demo_weights, images_per_shard=2)
    extract_regions(str(tmp_path / "a"), str(tmp_path / "out"), options)
    with pytest.raises(ValueError, match="shard 0 of other images"):  # another --input, as many shards
        extract_regions(str(tmp_path / "b"), str(tmp_path / "out"), options)
    with pytest.raises(ValueError, match="images_per_shard"):
        extract_regions(str(tmp_path / "a"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=3))
    # A file sorted before the others shifts every shard; one sorted after adds shards and resumes.
    first = tmp_path / "a" / "pairs" / "part-00000.parquet"
    os.rename(first, tmp_path / "a" / "pairs" / "part-00001.parquet")
    write_pairs(tmp_path / "before", scenes[4:6], duplicate_first=False)
    os.rename(tmp_path / "before" / "pairs" / "part-00000.parquet", first)
    with pytest.raises(ValueError, match="files added or removed"):
        extract_regions(str(tmp_path / "a"), str(tmp_path / "out"), options)
    os.rename(first, tmp_path / "a" / "pairs" / "part-00002.parquet")
    stats = extract_regions(str(tmp_path / "a"), str(tmp_path / "out"), options)
    assert (stats["in"], stats["kept"], stats["shards_resumed"], stats["images_processed"]) == (6, 6, 2, 2)
    os.remove(tmp_path / "a" / "pairs" / "part-00002.parquet")  # shard 2's regions would stay behind
    with pytest.raises(ValueError, match="part-00002.json"):
        extract_regions(str(tmp_path / "a"), str(tmp_path / "out"), options)
    regions = schemas.read_table(str(tmp_path / "out" / "regions"), "regions")
    assert sorted(regions.column("image_id").to_pylist()) == sorted(image_id(data) for data in scenes[:6])


def test_counts_below_one_and_an_output_inside_the_input_are_refused(tmp_path, demo_weights, capsys):
    from lait import cli

    for key in ("batch_size", "images_per_shard"):
        for value in (0, -1, True, 8.0):
            with pytest.raises(ValueError, match=key.replace("_", "-")):
                _options(demo_weights, **{key: value})
    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    base = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--weights", demo_weights, "--num-workers", "0", "--no-progress"]
    for option in ("--batch-size", "--images-per-shard", "--fixed-boxes"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*base, option, "0"])
        assert exit_.value.code == 2 and "must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    inside = str(tmp_path / "in" / "pairs" / "features")
    with pytest.raises(ValueError, match="inside the input"):
        extract_regions(str(tmp_path / "in"), inside, _options(demo_weights))
    assert not os.path.exists(inside)
    # --fixed-boxes 1 is a box count like any other (it used to be dropped when falsy, 0 now refused)
    assert cli.main([*base, "--fixed-boxes", "1"]) == 0
    regions = schemas.read_table(str(tmp_path / "out" / "regions"), "regions")
    assert regions.column("num_boxes").to_pylist() == [1]


def test_a_row_group_with_corrupted_pages_leaves_as_counted_rejects(tmp_path, demo_weights, capsys):
    """Bit rot under an intact footer: the row group's images are ``row_group_unreadable`` rejects (their ids
    are still readable), the rest goes on; when the ids are unreadable too, one line names file and row group."""
    from lait import cli
    from tests.features.parquet_rot import corrupt_pages

    ids = write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(6)], duplicate_first=False,
                      row_group_size=2)
    file = tmp_path / "in" / "pairs" / "part-00000.parquet"
    corrupt_pages(file, 2, "image_bytes")
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, num_workers=1))
    assert (stats["in"], stats["kept"], stats["rejected_by_reason"]) == (6, 4, {"row_group_unreadable": 2})
    rejected = schemas.read_table(str(tmp_path / "out" / "rejected"), "rejected").to_pylist()
    assert {r["image_id"] for r in rejected} == set(ids[4:])
    assert all(r["detail"].startswith(f"{file} row group 2: ") for r in rejected)
    corrupt_pages(file, 1, "image_id", "image_bytes", skip=0)  # page headers and ids too: nothing to count by
    code = cli.main(["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out2"), "--detector",
                     "demo", "--weights", demo_weights, "--num-workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"lait features: error: {file}: row group 1 is unreadable")


def test_json_files_written_at_once_by_two_parts_are_never_half_written(tmp_path):
    """Parts running at once write classes.json, run.json and stats.json into one folder: each writer has a
    temporary name of its own, so no rename fails and a reader sees a whole file."""
    import threading

    from pipeline.features import _write_json

    path = tmp_path / "out" / "classes.json"
    errors, bad = [], []

    def write(pad):
        for i in range(300):
            try:
                _write_json(str(path), {"i": i, "pad": "x" * pad})
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(repr(exc))

    writers = [threading.Thread(target=write, args=(pad,)) for pad in (10, 100_000)]
    [w.start() for w in writers]
    while any(w.is_alive() for w in writers):
        try:
            json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except ValueError:
            bad.append(1)
    [w.join() for w in writers]
    assert not errors and not bad and os.listdir(path.parent) == ["classes.json"]


def test_parts_of_another_count_or_other_settings_are_refused(tmp_path, demo_weights, monkeypatch, capsys):
    """A part started with another N (some shards would be no part's), or racing another part with other
    settings (run.json is created exclusively and read back), is refused; an incomplete part names the shards
    the run still lacks and the --part that computes them."""
    import pipeline.features as features
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(3)], duplicate_first=False)
    base = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--weights", demo_weights, "--num-workers", "0", "--no-progress", "--min-boxes", "2", "--max-boxes", "6",
            "--images-per-shard", "1"]
    assert cli.main([*base, "--part", "1/2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] is False and summary["shards_missing"] == "0, 2 (--part 0/2)"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["parts"] == 2
    with pytest.raises(ValueError, match=r"split in 2 parts \(--part I/2\), not 3"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=1,
                                                                               part=1, parts=3))
    real = features._read_json
    raced = []

    def racing(path):  # this part looked for run.json just before the other part wrote it
        if path.endswith("run.json") and not raced:
            raced.append(path)
            return None
        return real(path)

    monkeypatch.setattr(features, "_read_json", racing)
    with pytest.raises(ValueError, match=r"other settings \(selection\)"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=1,
                                                                               part=0, parts=2, max_boxes=9))
    assert raced and json.loads((tmp_path / "out" / "run.json").read_text())["selection"]["max_boxes"] == 6
    monkeypatch.undo()
    last = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, images_per_shard=1,
                                                                                  part=0, parts=2))
    assert last["complete"] and (last["in"], last["kept"], last["shards"]) == (3, 3, 3) and "shards_missing" not in last


def test_topk_sizes_and_workers_out_of_range_are_refused_before_any_work(tmp_path, demo_weights, capsys):
    """--topk 0 wrote all-zero classes, --topk -1 failed after detection with run.json written, --min-size 0 made
    whole-image boxes, --num-workers -3 became 0: each is now refused before the output exists."""
    from lait import cli

    for bad in ({"topk": 0}, {"topk": -1}, {"num_workers": -3}, {"detector_config": {"min_size": 0}},
                {"detector_config": {"max_size": -5}}):
        with pytest.raises(ValueError, match=r"(topk|num-workers|min-size|max-size): -?\d+, need a whole number"):
            _options(demo_weights, **bad)
    with pytest.raises(ValueError, match="min-size 100 is above max-size 50"):
        _options(demo_weights, detector_config={"min_size": 100, "max_size": 50})
    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])])
    base = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--weights", demo_weights, "--num-workers", "0", "--no-progress"]
    for option, value, message in (("--topk", "0", "must be 1 or more"), ("--topk", "-1", "must be 1 or more"),
                                   ("--min-size", "0", "must be 1 or more"), ("--max-size", "-5", "must be 1 or more"),
                                   ("--num-workers", "-3", "must be 0 or more")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*base, option, value])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # a long-side cap below the short side, given or the detector's own (the demo weights' max_size is 96)
    for extra in (["--min-size", "100", "--max-size", "50"], ["--min-size", "200"]):
        assert cli.main([*base, *extra]) == 2
        assert "is above max-size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_input_leaves_no_run_state_and_an_empty_folder_is_an_error(tmp_path, demo_weights):
    """The input is checked before run.json and classes.json are written: a run that failed on its input does not
    refuse a retry with other settings. A folder without pairs/, candidates/ or Parquet files is an error, not a
    run of 0 images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "bytes": [b"x"]}), tmp_path / "in" / "part-0.parquet")
    with pytest.raises(schemas.SchemaMismatchError, match="image_bytes"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights, max_boxes=50))
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no input at"):
        extract_regions(str(tmp_path / "nowhere"), str(tmp_path / "out"), _options(demo_weights))
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no pairs/, candidates/ or Parquet files under"):
        extract_regions(str(tmp_path / "empty"), str(tmp_path / "out"), _options(demo_weights))
    assert not (tmp_path / "out").exists()
    os.remove(tmp_path / "in" / "part-0.parquet")
    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])], duplicate_first=False)
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), _options(demo_weights))  # other settings
    assert (stats["in"], stats["kept"]) == (1, 1)


def test_resume_keeps_disk_and_books_equal_after_the_input_or_a_killed_shard_changed(tmp_path, demo_weights):
    """Rows without an id dropped from the input: their stale rejects go too. A shard killed after its Parquet
    but before its stats file, recomputed from fixed input: its old rejects go, so no image is both kept and
    rejected. Data files of shards beyond the input's count (killed before their stats file) go too."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    images = [encode(make_scene(i)[0]) for i in range(3)]
    ids = [image_id(data) for data in images]
    (tmp_path / "a").mkdir()
    table = pa.table({"image_id": pa.array([ids[0], None, ids[1], None, ids[2]]),
                      "image_bytes": [images[0], images[0], images[1], images[1], images[2]]})
    pq.write_table(table, tmp_path / "a" / "part-0.parquet")
    options = _options(demo_weights, max_boxes=3)
    assert extract_regions(str(tmp_path / "a"), str(tmp_path / "out_a"), options)["rejected"] == 2
    pq.write_table(table.filter(pc.is_valid(table["image_id"])), tmp_path / "a" / "part-0.parquet")
    stats = extract_regions(str(tmp_path / "a"), str(tmp_path / "out_a"), options)
    assert stats["complete"] and (stats["in"], stats["kept"], stats["rejected"]) == (3, 3, 0)
    assert not list((tmp_path / "out_a" / "rejected").iterdir())

    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"image_id": ids, "image_bytes": [images[0], b"garbage", images[2]]}),
                   tmp_path / "c" / "part-0.parquet")
    out = tmp_path / "out_c"
    assert extract_regions(str(tmp_path / "c"), str(out), options)["rejected"] == 1
    os.remove(out / "shards" / "part-00000.json")  # killed after the shard's Parquet files, before its stats file
    os.remove(out / "stats.json")
    stale = out / "regions" / "part-00007.parquet"  # a shard beyond the input's count, killed the same way
    stale.write_bytes((out / "regions" / "part-00000.parquet").read_bytes())
    pq.write_table(pa.table({"image_id": ids, "image_bytes": images}), tmp_path / "c" / "part-0.parquet")
    stats = extract_regions(str(tmp_path / "c"), str(out), options)
    assert (stats["in"], stats["kept"], stats["rejected"]) == (3, 3, 0)
    assert sorted(schemas.read_table(str(out / "regions"), "regions").column("image_id").to_pylist()) == sorted(ids)
    assert not list((out / "rejected").iterdir()) and not stale.exists()


def test_damaged_run_files_are_one_error_naming_them(tmp_path, demo_weights):
    write_pairs(tmp_path / "in", [encode(make_scene(0)[0])], duplicate_first=False)
    options = _options(demo_weights, max_boxes=3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"out/run.json: holds a JSON list"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    extract_regions(str(tmp_path / "in"), str(tmp_path / "good"), options)
    (tmp_path / "good" / "shards" / "part-00000.json").write_text("")
    with pytest.raises(ValueError, match=r"shards/part-00000.json: not a readable JSON file"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "good"), options)


def test_resume_compares_the_weights_by_content_not_by_path(tmp_path, demo_weights):
    """A file retrained at the same path is other weights (the run would mix two models' regions): refused. The
    same file through another path resumes; so does a run.json from before weights were fingerprinted."""
    import shutil

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(4)], duplicate_first=False)
    weights = str(tmp_path / "w" / "demo.safetensors")
    os.makedirs(tmp_path / "w")
    shutil.copy(demo_weights, weights)
    options = _options(weights, images_per_shard=2, max_boxes=3)
    with pytest.raises(KeyboardInterrupt):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options,
                        detector=_Interrupting(options.load_detector(), 2))
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())
    assert recorded["weights"] == os.path.realpath(weights) and recorded["weights_bytes"] == os.path.getsize(weights)
    torch.manual_seed(7)  # retrained: same path, same architecture, other numbers
    demo.save(demo.build(SMALL, CLASS_NAMES), weights)
    with pytest.raises(ValueError, match="other weights"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"),  # the first weights, at another path
                            _options(demo_weights, images_per_shard=2, max_boxes=3))
    assert stats["complete"] and stats["shards_resumed"] == 1
    for key in ("weights_sha256", "weights_bytes"):  # a run.json written before fingerprints, --weights as typed
        del recorded[key]
    recorded["weights"] = weights
    (tmp_path / "out" / "run.json").write_text(json.dumps(recorded))
    os.remove(tmp_path / "out" / "shards" / "part-00001.json")
    shutil.copy(demo_weights, weights)
    stats = extract_regions(str(tmp_path / "in"), str(tmp_path / "out"), options)
    assert stats["complete"] and stats["shards_resumed"] == 1


class _CountingReads:
    """A ParquetFile that counts its row-group reads, whole (``read_row_group``) or streamed (``iter_batches``)."""

    def __init__(self, inner, reads):
        self.inner, self.reads = inner, reads

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_row_group(self, group, columns=None):
        self.reads.append(group)
        return self.inner.read_row_group(group, columns=columns)

    def iter_batches(self, batch_size, row_groups, columns):
        self.reads += row_groups
        return self.inner.iter_batches(batch_size=batch_size, row_groups=row_groups, columns=columns)


def _worker_reads(monkeypatch, dataset, shards, spec, workers, piece=2, read_window=0):
    """Each of ``workers`` DataLoader workers' share run in turn here: ``(row groups each read, images each handed over)``."""
    import pipeline.features as features

    reads = []
    opened = features._open_parquet
    monkeypatch.setattr(features, "_open_parquet",
                        lambda path, file, **options: _CountingReads(opened(path, file, **options), reads))
    by_worker, got = [], []
    for worker in range(workers):
        monkeypatch.setattr(torch.utils.data, "get_worker_info",
                            lambda: type("Info", (), {"id": worker, "num_workers": workers})())
        reads.clear()
        pieces = list(features.ShardImages(dataset, shards, spec, piece=piece, read_window=read_window))
        by_worker.append(list(reads))
        got.append([(piece.shard, image) for piece in pieces for image in piece.image_ids])
    return by_worker, got


def test_a_worker_reads_each_row_group_once_not_once_per_piece(tmp_path, demo_weights, monkeypatch):
    """Pieces of 2 images out of row groups of 12: every worker reads a row group once for all its pieces of it
    (it used to read the whole group for each piece), and hands over the same images."""
    import pipeline.features as features

    images = [encode(make_scene(i, (40, 30))[0]) for i in range(24)]
    ids = write_pairs(tmp_path / "in", images, duplicate_first=False, row_group_size=12)
    dataset = str(tmp_path / "in" / "pairs")
    shards, _ = features.plan_shards(dataset, 10)
    spec = _options(demo_weights).load_detector().spec
    for workers in (1, 2):
        by_worker, got = _worker_reads(monkeypatch, dataset, shards, spec, workers)
        for reads in by_worker:
            assert reads and sorted(set(reads)) == reads, (workers, by_worker)  # each group it needs, once
        assert sorted(sum(got, [])) == sorted((i // 10, image) for i, image in enumerate(ids))


def test_workers_take_blocks_of_pieces_so_a_row_group_is_read_by_few_of_them(tmp_path, demo_weights, monkeypatch):
    """4 row groups of 12 images, 3 workers, pieces of 2: each worker takes a contiguous block, so a row group is
    read by at most 2 of them (taking every n-th piece, each of the 3 read all 4 groups), and all hand over
    their images, every image once."""
    import pipeline.features as features

    images = [encode(make_scene(i, (40, 30))[0]) for i in range(48)]
    ids = write_pairs(tmp_path / "in", images, duplicate_first=False, row_group_size=12)
    dataset = str(tmp_path / "in" / "pairs")
    shards, _ = features.plan_shards(dataset, 10)
    spec = _options(demo_weights).load_detector().spec
    by_worker, got = _worker_reads(monkeypatch, dataset, shards, spec, workers=3, read_window=features.READ_WINDOW_IMAGES)
    readers = {group: [w for w, reads in enumerate(by_worker) if group in reads] for group in range(4)}
    assert all(1 <= len(found) <= 2 for found in readers.values()), readers
    every_nth, _ = _worker_reads(monkeypatch, dataset, shards, spec, workers=3)  # the default: all read all
    assert all(sorted(set(reads)) == [0, 1, 2, 3] for reads in every_nth), every_nth
    assert sum(map(len, by_worker)) <= 4 + 3 - 1, by_worker  # each group once, plus the blocks' boundaries
    assert all(got), "every worker decodes"
    assert sorted(sum(got, [])) == sorted((i // 10, image) for i, image in enumerate(ids))


def _pairs_file(folder, count: int, size: int, rows_per_page: int | None = None, row_group_size: int = 1024,
                duplicates: tuple[int, ...] = ()) -> str:
    """A pairs dataset of ``count`` rows of ``size`` random bytes in ``folder``: as lait writes it
    (``schemas.write_table``: one page per 1,024 values), or in pages of ``rows_per_page`` rows; the rows in
    ``duplicates`` repeat the image before them. Returns the dataset's folder."""
    rng = np.random.default_rng(count)
    rows = []
    for i in range(count):
        row = {"image_id": f"img{i}", "image_bytes": rng.bytes(size)} if i not in duplicates else rows[-1]
        rows.append({**row, "pair_id": f"p{i}", "caption": "x"})
    path = folder / "pairs" / "part-00000.parquet"
    table = schemas.to_table(rows, "pairs")
    if rows_per_page is None:
        schemas.write_table(table, str(path), "pairs", row_group_size=row_group_size)
    else:
        path.parent.mkdir(parents=True)
        pq.write_table(table, str(path), row_group_size=row_group_size, compression="zstd",
                       max_rows_per_page=rows_per_page)
    return str(path.parent)


def test_a_worker_streams_its_row_group_holding_about_a_piece_at_a_time(tmp_path, monkeypatch):
    """A row group of 256 images of 64 KB (16 MB) in pages of 4 rows, pieces of 4 taken as a worker of 2 takes them
    (every other piece): between pieces the stream holds its batch of a piece, the rows it handed over and pyarrow's
    reader (about 2 MB of its own whatever the group), never the group, which a whole read holds; the rows are
    the group's, in order."""
    import pipeline.features as features

    monkeypatch.setattr(features, "READ_BUFFER_BYTES", 64 << 10)
    dataset = _pairs_file(tmp_path, 256, 64 << 10, rows_per_page=4, row_group_size=256)
    file = os.path.join(dataset, "part-00000.parquet")
    parquet = features._open_parquet(dataset, file, streamed=True)
    before = pa.total_allocated_bytes()
    stream = features.RowGroupStream(parquet, 0, 4)
    held = []
    for start in range(0, 256, 8):
        rows = list(range(start, start + 4))
        taken = stream.take(rows)
        assert taken.column("image_id").to_pylist() == [f"img{row}" for row in rows]
        assert stream._batch.num_rows <= 4
        held.append(pa.total_allocated_bytes() - before)
        del taken
    piece = 4 * (64 << 10)
    assert max(held) < 16 * piece, held  # 4 MB: a quarter of the group
    assert max(held) - min(held) <= piece, held  # it does not grow as the group streams past
    with pytest.raises(ValueError, match="streamed past"):
        stream.take([0])
    del stream
    whole = parquet.read_row_group(0, columns=features.INPUT_COLUMNS)
    assert pa.total_allocated_bytes() - before >= 256 * (64 << 10)
    del whole


@pytest.mark.parametrize("rows_per_page", [None, 2])
def test_streamed_pieces_hold_the_rows_a_whole_read_gives_in_order(tmp_path, monkeypatch, rows_per_page):
    """Three row groups of 10 rows (repeated images leave gaps in a piece's rows), pieces of 3, one to three workers
    taking every n-th piece or blocks: each worker hands over, piece by piece, exactly the rows (ids and bytes, in
    order, with their shard) that reading the whole row group and taking them gives, on lait's files and on
    pages of 2 rows."""
    import types

    import pipeline.features as features

    dataset = _pairs_file(tmp_path, 30, 500, rows_per_page=rows_per_page, row_group_size=10, duplicates=(4, 5, 13, 21))
    shards, _ = features.plan_shards(dataset, 7)
    whole = {}
    for shard, parts in features.batch_pieces(shards, 3):
        for file, group, rows in parts:
            whole.setdefault((file, group), pq.ParquetFile(file).read_row_group(group, columns=features.INPUT_COLUMNS))
    spec = types.SimpleNamespace(input_size=None)
    for workers in (1, 2, 3):
        for window in (0, 6):
            images = features.ShardImages(dataset, shards, spec, 3, read_window=window)
            images.prepare = lambda data, size: data  # decoding stubbed out: the bytes as read
            handed = []
            for worker in range(workers):
                monkeypatch.setattr(torch.utils.data, "get_worker_info",
                                    lambda: types.SimpleNamespace(id=worker, num_workers=workers))
                got = [(piece.shard, piece.image_ids, piece.inputs, piece.rejects) for piece in images]
                expected = []
                for index in images.worker_pieces(worker, workers):
                    shard, parts = images.pieces[index]
                    taken = [whole[file, group].take(rows) for file, group, rows in parts]
                    expected.append((shard, sum((t.column("image_id").to_pylist() for t in taken), []),
                                     sum((t.column("image_bytes").to_pylist() for t in taken), []), []))
                assert got == expected, (workers, window, worker)
                handed += [image for _, ids, _, _ in got for image in ids]
            assert sorted(handed) == sorted(f"img{i}" for i in range(30) if i not in (4, 5, 13, 21))


def test_a_stream_failing_inside_a_row_group_keeps_the_rows_read_before_and_rejects_the_rest(tmp_path):
    """Pages of 2 rows, the last quarter of one row group's ``image_bytes`` rotten: the rows a stream read before the
    rot keep their bytes, the rest are ``row_group_unreadable`` rejects (the whole group, for lait's files of one page
    per chunk, as when a worker read whole groups), every row once. The page where the rot begins can pass: zstd
    stores random bytes as raw blocks, which it does not check, and the next page's header is what fails."""
    import types

    import pipeline.features as features
    from tests.features.parquet_rot import corrupt_pages

    dataset = _pairs_file(tmp_path, 64, 30000, rows_per_page=2, row_group_size=64)
    file = os.path.join(dataset, "part-00000.parquet")
    written = pq.read_table(file, columns=["image_bytes"]).column(0).to_pylist()
    group = pq.ParquetFile(file).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "image_bytes")
    corrupt_pages(file, 0, "image_bytes", skip=chunk.total_compressed_size * 3 // 4)
    shards, _ = features.plan_shards(dataset, 100)
    images = features.ShardImages(dataset, shards, types.SimpleNamespace(input_size=None), 4)
    images.prepare = lambda data, size: data
    pieces = list(images)
    kept = [(image, data) for piece in pieces for image, data in zip(piece.image_ids, piece.inputs)]
    rejected = [image for piece in pieces for image, reason, _ in piece.rejects if reason == "row_group_unreadable"]
    assert [image for image, _ in kept] + rejected == [f"img{i}" for i in range(64)]  # kept first, then rejected
    assert rejected and len(kept) <= 48  # the rot begins in row 47's page: nothing after it is kept
    assert [data for _, data in kept][:-2] == written[:len(kept) - 2]  # nor changed before that page


@pytest.mark.parametrize("count, workers, piece, window", [
    (100, 3, 2, 24), (101, 4, 16, 4096), (5, 14, 16, 4096), (94, 14, 16, 4096), (1, 2, 8, 4096),
    (500, 14, 16, 4096), (0, 3, 2, 24), (37, 1, 2, 24),
])
def test_worker_pieces_are_contiguous_blocks_covering_every_piece_once(count, workers, piece, window):
    """Every piece goes to one worker; a worker's pieces are one contiguous run per round of blocks; all workers
    get work when there are as many pieces as workers, each starting in the first round."""
    from pipeline.features import worker_block, worker_pieces

    shares = [worker_pieces(count, w, workers, piece, window) for w in range(workers)]
    assert sorted(sum(shares, [])) == list(range(count))
    block = worker_block(workers, piece, window)
    rounds = -(-count // (workers * block))
    for share in shares:
        assert share == sorted(share)
        runs = sum(1 for i, index in enumerate(share) if i == 0 or index != share[i - 1] + 1)
        assert runs <= rounds
    busy = [share for share in shares if share]
    assert len(busy) == min(count, workers)
    assert all(share[0] < min(count, workers * block) for share in busy)
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= rounds  # balanced: a round's blocks differ by one piece at most


def test_regions_with_several_workers_are_those_of_the_main_process(tmp_path, demo_weights):
    """Five row groups, shards of 4, three worker processes taking every n-th piece or blocks: the same shards, with the same
    images, regions, rejects and counts, as reading and decoding in the main process."""
    images = [encode(make_scene(i, (64 + 8 * (i % 4), 48 + 8 * (i % 3)))[0]) for i in range(27)]
    images[7] = b"not an image"
    write_pairs(tmp_path / "in", images, row_group_size=6)
    outputs = {}
    for workers, window in ((0, 0), (3, 0), (3, 8)):  # the main process; workers by every n-th piece; in blocks
        out = tmp_path / f"out{workers}-{window}"
        stats = extract_regions(str(tmp_path / "in"), str(out), _options(demo_weights, num_workers=workers,
                                                                         images_per_shard=4, read_window=window))
        shard_stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.json"))]
        by_shard = {p.name: sorted(schemas.read_table(str(p), "regions").column("image_id").to_pylist())
                    for p in sorted((out / "regions").glob("*.parquet"))}
        rejected = sorted((r["image_id"], r["reason"]) for r in schemas.read_table(str(out / "rejected"), "rejected").to_pylist())
        regions = {r["image_id"]: r for r in schemas.read_table(str(out / "regions"), "regions").to_pylist()}
        outputs[workers, window] = (stats, [{k: v for k, v in s.items() if k != "seconds"} for s in shard_stats],
                                    by_shard, rejected, regions)
    stats0, shards0, by_shard0, rejected0, regions0 = outputs[0, 0]
    for stats3, shards3, by_shard3, rejected3, regions3 in (outputs[3, 0], outputs[3, 8]):
        _same_regions(stats0, shards0, by_shard0, rejected0, regions0, stats3, shards3, by_shard3, rejected3, regions3)


def _same_regions(stats0, shards0, by_shard0, rejected0, regions0, stats3, shards3, by_shard3, rejected3, regions3):
    for key in ("in", "kept", "rejected", "rejected_by_reason", "shards", "boxes_total", "boxes_per_image"):
        assert stats0[key] == stats3[key], key
    assert (stats3["in"], stats3["kept"], stats3["rejected"], stats3["shards"]) == (27, 26, 1, 7)
    assert shards0 == shards3 and by_shard0 == by_shard3 and rejected0 == rejected3
    assert set(regions0) == set(regions3) and len(regions0) == 26
    for image, alone in regions0.items():
        other = regions3[image]
        assert other["num_boxes"] == alone["num_boxes"] and other["class_ids"] == alone["class_ids"], image
        np.testing.assert_allclose(other["boxes"], alone["boxes"], atol=1e-3)
        np.testing.assert_allclose(other["features"], alone["features"], rtol=1e-2, atol=1e-3)


def _cli_base(input_dir, output_dir, weights, *extra):
    return ["features", "--input", str(input_dir), "--output", str(output_dir), "--detector", "demo",
            "--weights", weights, "--device", "cpu", "--num-workers", "0", "--no-progress", "--min-boxes", "2",
            "--max-boxes", "4", "--images-per-shard", "1", *extra]


def _drop_shard(out, index):
    """A run killed before shard ``index`` finished: its stats file and data files gone."""
    name = f"part-{index:05d}"
    os.remove(out / "shards" / f"{name}.json")
    for sub in ("regions", "rejected"):
        if (out / sub / f"{name}.parquet").exists():
            os.remove(out / sub / f"{name}.parquet")


def _edit_run_json(out, **changes):
    """Rewrite run.json as an older run would have written it: keys set, or dropped where the value is None."""
    recorded = json.loads((out / "run.json").read_text())
    for key, value in changes.items():
        recorded.pop(key) if value is None else recorded.__setitem__(key, value)
    (out / "run.json").write_text(json.dumps(recorded))


def test_resume_refuses_another_precision_or_decode_path_and_accepts_an_older_run_json(tmp_path, demo_weights, capsys):
    """--precision and where JPEGs are decoded change the regions (bf16 against fp32: features off by up to 0.6,
    boxes moved), so run.json records them as resolved and a resume with others is refused; a run.json from
    before they were recorded resumes. fp16 on the CPU is refused before the run's books are written."""
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(2)], duplicate_first=False)
    out = tmp_path / "out"
    assert cli.main(_cli_base(tmp_path / "in", tmp_path / "fp16", demo_weights, "--precision", "fp16")) == 2
    assert "fp16 autocast is a GPU mode" in capsys.readouterr().err and not (tmp_path / "fp16" / "run.json").exists()
    assert cli.main(_cli_base(tmp_path / "in", out, demo_weights)) == 0  # auto: fp32 and the workers on the CPU
    recorded = json.loads((out / "run.json").read_text())
    assert (recorded["precision"], recorded["decode"]) == ("fp32", "workers")
    _drop_shard(out, 1)
    capsys.readouterr()
    for extra, changed in ((["--precision", "bf16"], "precision"), (["--decode", "device"], "decode")):
        assert cli.main(_cli_base(tmp_path / "in", out, demo_weights, *extra)) == 2
        err = capsys.readouterr().err
        assert f"other settings ({changed})" in err and err.count("\n") == 1, err
    assert not (out / "shards" / "part-00001.json").exists()
    assert recorded["random_init_seed"] is None  # trained weights: no seed
    # a run.json from before precision, decode and the seed were recorded: unknown, accepted
    _edit_run_json(out, precision=None, decode=None, random_init_seed=None)
    assert cli.main(_cli_base(tmp_path / "in", out, demo_weights, "--precision", "fp32")) == 0
    assert json.loads((out / "stats.json").read_text())["shards_resumed"] == 1


def test_random_init_is_seeded_so_runs_and_resumes_compute_with_one_model(tmp_path, demo_weights, capsys):
    """--random-init drew unseeded weights: a resume or another part mixed regions of two random models. The
    weights are drawn from a fixed seed now, recorded in run.json: two clean runs give the same features, a run
    with another seed is refused, and so is resuming a run whose random weights were drawn without one."""
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(2)], duplicate_first=False)
    for out in ("a", "b"):  # the demo weights' architecture, fresh random weights
        assert cli.main(_cli_base(tmp_path / "in", tmp_path / out, demo_weights, "--random-init")) == 0
    a, b = (schemas.read_table(str(tmp_path / out / "regions"), "regions").sort_by("image_id") for out in ("a", "b"))
    assert a.num_rows == 2 and a.column("boxes").to_pylist() == b.column("boxes").to_pylist()
    assert a.column("features").to_pylist() == b.column("features").to_pylist()
    recorded = json.loads((tmp_path / "a" / "run.json").read_text())
    assert (recorded["random_init"], recorded["random_init_seed"]) == (True, 0)
    _drop_shard(tmp_path / "a", 1)
    with pytest.raises(ValueError, match=r"other settings \(random_init_seed\)"):
        extract_regions(str(tmp_path / "in"), str(tmp_path / "a"), _options(demo_weights, random_init=True, seed=1,
                                                                              images_per_shard=1, max_boxes=4))
    _edit_run_json(tmp_path / "a", random_init_seed=None)  # a run from before the seed
    capsys.readouterr()
    assert cli.main(_cli_base(tmp_path / "in", tmp_path / "a", demo_weights, "--random-init")) == 2
    assert "drawn without a seed" in capsys.readouterr().err


def test_topk_above_the_class_count_stores_and_records_all_classes(tmp_path, demo_weights, capsys):
    """--topk 100000 with 4 classes was recorded as topk 100000 in classes.json and run.json while 4 were stored per
    box: it means all classes now, recorded as what is stored; another K at or above the class count resumes."""
    from lait import cli

    write_pairs(tmp_path / "in", [encode(make_scene(i)[0]) for i in range(2)], duplicate_first=False)
    out = tmp_path / "out"
    assert cli.main(_cli_base(tmp_path / "in", out, demo_weights, "--topk", "100000")) == 0
    classes = json.loads((out / "classes.json").read_text())
    assert classes["topk"] == classes["num_classes"] == len(CLASS_NAMES) == 4
    assert json.loads((out / "run.json").read_text())["topk"] == 4
    rows = schemas.read_table(str(out / "regions"), "regions").to_pylist()
    assert {len(box) for row in rows for box in row["topk_class_ids"]} == {4}
    _drop_shard(out, 1)
    _edit_run_json(out, topk=100000)  # as the run was recorded before
    assert cli.main(_cli_base(tmp_path / "in", out, demo_weights, "--topk", "5")) == 0
    assert json.loads((out / "stats.json").read_text())["shards_resumed"] == 1
    _drop_shard(out, 1)
    capsys.readouterr()
    assert cli.main(_cli_base(tmp_path / "in", out, demo_weights, "--topk", "3")) == 2
    assert "other settings (topk)" in capsys.readouterr().err
