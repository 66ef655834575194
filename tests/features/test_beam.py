"""The features stage as a Beam pipeline: ExtractRegions under TestPipeline, and run() end to end."""
import json

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import schemas
from pipeline.outputs import RUN_MARKER
from model.detectors import demo
from pipeline.features import DecodeImagesFn, ExtractRegions, FeatureOptions, run
from schemas.io import parquet_options
from tests.features.scenes import CLASS_NAMES, encode, image_id, make_scene, write_pairs

SMALL = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]}
DIRECT = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _weights(tmp_path):
    torch.manual_seed(0)
    return demo.save(demo.build(SMALL, CLASS_NAMES), str(tmp_path / "demo.safetensors"))


def test_decode_fn_lifecycle_rejects_with_reason():
    fn = DecodeImagesFn(64, 96)
    good = encode(make_scene(0)[0])
    (image_id_out, decoded), = list(fn.process(("a", good)))
    assert image_id_out == "a" and decoded.pixels.shape[1] == 64
    (rejected,), = [list(fn.process(("b", b"junk")))]
    assert rejected.tag == "rejected" and rejected.value["reason"] == "image_undecodable" and rejected.value["image_id"] == "b"
    why = "part-0.parquet row group 2: bad page"  # what ReadRowGroupsFn gives for a row group it cannot read
    (rejected,), = [list(fn.process(("c", why)))]
    assert (rejected.value["reason"], rejected.value["detail"]) == ("row_group_unreadable", why)


def test_extract_regions_transform(tmp_path):
    weights = _weights(tmp_path)
    images = [encode(make_scene(i)[0]) for i in range(3)]
    rows = [{"image_id": image_id(d), "image_bytes": d} for d in images]
    rows += [dict(rows[0]), {"image_id": "broken", "image_bytes": b"junk"}, {"image_id": None, "image_bytes": images[1]}]
    options = FeatureOptions(detector="demo", weights=weights, batch_size=2, min_boxes=2, max_boxes=4)
    with BeamTestPipeline(options=PipelineOptions(DIRECT)) as p:
        out = p | beam.Create(rows) | ExtractRegions(options)
        assert_that(out["regions"] | "Ids" >> beam.Map(lambda r: r["image_id"]),
                    equal_to([image_id(d) for d in images]), label="OneRowPerDistinctImage")
        assert_that(out["regions"] | "Boxes" >> beam.Map(lambda r: 2 <= r["num_boxes"] == len(r["features"]) <= 4),
                    equal_to([True] * 3), label="BoxCounts")
        assert_that(out["rejected"] | "Reasons" >> beam.Map(lambda r: (r["stage"], r["reason"])),
                    equal_to([("features", "image_undecodable"), ("features", "image_id_missing")]), label="Rejects")


def test_run_writes_the_stage_folder(tmp_path):
    weights = _weights(tmp_path)
    write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(3)] + [b"junk"])
    stats = run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "features"), "--detector", "demo",
                 "--weights", weights, "--min-boxes", "2", "--max-boxes", "5"] + DIRECT)
    assert (stats["in"], stats["kept"], stats["rejected"], stats["rejected_by_reason"]) == (4, 3, 1, {"image_undecodable": 1})
    assert json.loads((tmp_path / "features" / "stats.json").read_text()) == stats
    assert stats["input"] == "filter"  # as the local runner, filter and relevance name theirs
    regions = schemas.read_table(str(tmp_path / "features" / "regions"), "regions")
    assert regions.num_rows == 3 and regions.schema.field("features").type.value_type.list_size == 256
    assert schemas.read_table(str(tmp_path / "features" / "rejected"), "rejected").column("reason").to_pylist() == ["image_undecodable"]
    assert json.loads((tmp_path / "features" / "classes.json").read_text())["class_names"] == CLASS_NAMES


def test_beam_writes_attributes_of_an_attribute_checkpoint(tmp_path):
    """The Beam form with attribute weights: region rows carry top-k attributes; the output schema has their columns."""
    import pickle

    from model.detectors import attribute_count
    from pipeline.features import output_schema
    from tests.features.test_weights import detectron2_vg_state

    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    # A detectron2 pickle in protocol 4: protocol 2 (test_weights loads that form) stores the arrays as latin-1 text,
    # seconds to write and to read, and the test, the driver and the worker each read this file.
    with open(path, "wb") as f:
        pickle.dump({"model": detectron2_vg_state(np.random.default_rng(0), he_scale=True)}, f, protocol=4)
    assert attribute_count("vg-r101-c4", str(path)) == 400 and attribute_count("vg-r101-c4", None) == 0
    names = output_schema(2048, True).names
    assert names[-2:] == ["topk_attribute_ids", "topk_attribute_probs"] and "topk_attribute_ids" not in output_schema(2048, False).names
    images = [encode(make_scene(i)[0]) for i in range(2)]
    options = FeatureOptions(detector="vg-r101-c4", weights=str(path), batch_size=2, min_boxes=2, max_boxes=3, topk=4,
                             detector_config={"min_size": 64, "max_size": 96, "rpn_post_nms_top_n": 4})
    with BeamTestPipeline(options=PipelineOptions(DIRECT)) as p:
        out = p | beam.Create([{"image_id": image_id(d), "image_bytes": d} for d in images]) | ExtractRegions(options)
        assert_that(out["regions"] | beam.Map(lambda r: (len(r["topk_attribute_ids"]) == r["num_boxes"],
                                                        {len(a) for a in r["topk_attribute_ids"]})),
                    equal_to([(True, {4})] * 2))


def test_rerun_refuses_a_finished_output_and_clears_an_interrupted_one(tmp_path):
    """The Beam form cannot resume: a finished output is refused; a killed run's leftovers never double the rows."""
    import shutil

    import pytest

    weights = _weights(tmp_path)
    write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(3)])
    argv = ["--input", str(tmp_path / "filter"), "--detector", "demo", "--weights", weights, "--min-boxes", "2",
            "--max-boxes", "5"] + DIRECT
    done = tmp_path / "done"
    run(argv + ["--output", str(done)])
    with pytest.raises(ValueError, match="already holds a finished features run"):
        run(argv + ["--output", str(done)])
    # What a run killed before its end leaves: finished shards, a Beam temporary folder, no stats.json.
    killed = tmp_path / "killed"
    shard = next((done / "regions").glob("*.parquet"))
    (killed / "regions" / "beam-temp-part-0123").mkdir(parents=True)
    shutil.copy(shard, killed / "regions" / "part-00001-of-00002.parquet")  # another run's shard count: another name
    shutil.copy(shard, killed / "regions" / "beam-temp-part-0123" / "0123.parquet")
    (killed / RUN_MARKER).write_text('{"stage": "features"}')  # the run had started there
    stats = run(argv + ["--output", str(killed)])
    assert stats["kept"] == 3
    regions = schemas.read_table(str(killed / "regions"), "regions")
    assert sorted(regions.column("image_id").to_pylist()) == sorted(schemas.read_table(str(done / "regions"), "regions").column("image_id").to_pylist())
    assert not list((killed / "regions").glob("beam-temp-*"))


def test_beam_matches_the_local_runner_on_duplicates_mixed_shapes_and_bad_rows(tmp_path, monkeypatch):
    """RunInference batches whatever arrives together; images of other padded shapes must not change an image's
    regions, so Beam and `lait features` (which batches by shape) agree image for image. Copies of an image in one
    row group, in two row groups and in two files are one image; rows without an id, without bytes (null or
    empty) or with undecodable bytes leave with the same reasons; the books (in, kept, rejected by reason) agree."""
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline import features_beam
    from pipeline.features import extract_regions

    weights = _weights(tmp_path)
    sizes = [(64 + i, 64 + i) if i % 2 else (88 + 3 * i, 64) for i in range(7)] + [(64, 100), (200, 64)]
    images = [encode(make_scene(i, size)[0]) for i, size in enumerate(sizes)]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    images.append(encode(make_scene(9, (120, 80))[0], "JPEG", exif=exif.tobytes()))
    a, b, c, d, e, f, g, h, i, rotated = ((image_id(data), data) for data in images)
    bad = [(None, images[3]), ("junk", b"junk"), ("empty", b""), ("missing", None)]
    files = {"part-00000.parquet": [a, b, b, c, a, bad[0], d, bad[1], bad[2], e, f, bad[3]],  # row groups of 3
             "part-00001.parquet": [a, g, bad[1], h, i, c, rotated]}
    for name, rows in files.items():
        (tmp_path / "filter").mkdir(exist_ok=True)
        pq.write_table(pa.table({"image_id": pa.array([r[0] for r in rows], pa.string()),
                                 "image_bytes": pa.array([r[1] for r in rows], pa.binary())}),
                       tmp_path / "filter" / name, row_group_size=3)
    monkeypatch.setattr(features_beam, "bucket_count", lambda rows, batch_size: 3)  # a few groups, not one
    beam_stats = run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "beam"), "--detector", "demo",
                      "--weights", weights, "--min-boxes", "2", "--max-boxes", "5", "--batch-size", "4"] + DIRECT)
    local_stats = extract_regions(str(tmp_path / "filter"), str(tmp_path / "local"),
                                  FeatureOptions(detector="demo", weights=weights, num_workers=0, batch_size=4,
                                                 min_boxes=2, max_boxes=5))
    books = ("in", "kept", "rejected", "rejected_by_reason")
    assert {k: beam_stats[k] for k in books} == {k: local_stats[k] for k in books} == {
        "in": 14, "kept": 10, "rejected": 4,
        "rejected_by_reason": {"image_id_missing": 1, "image_undecodable": 1, "image_missing": 2}}
    beam_rejected, local_rejected = (Counter((r["image_id"], r["reason"]) for r in schemas.read_table(
        str(tmp_path / name / "rejected"), "rejected").to_pylist()) for name in ("beam", "local"))
    assert beam_rejected == local_rejected == Counter({(None, "image_id_missing"): 1, ("junk", "image_undecodable"): 1,
                                                       ("empty", "image_missing"): 1, ("missing", "image_missing"): 1})
    beam_rows, local_rows = ({row["image_id"]: row for row in schemas.read_table(str(tmp_path / name / "regions"),
                                                                                  "regions").to_pylist()}
                             for name in ("beam", "local"))
    assert schemas.read_table(str(tmp_path / "beam" / "regions"), "regions").num_rows == len(beam_rows) == 10
    assert beam_rows.keys() == local_rows.keys() == {image_id(data) for data in images}
    for image, row in beam_rows.items():
        local = local_rows[image]
        assert (row["image_width"], row["image_height"], row["class_ids"]) == (
            local["image_width"], local["image_height"], local["class_ids"]), image
        np.testing.assert_allclose(row["boxes"], local["boxes"], atol=1e-3)
        np.testing.assert_allclose(row["features"], local["features"], atol=1e-2)


def test_padded_shape_reads_only_the_header():
    """The shape an image's batch is padded to, before decoding: network size from the header (EXIF orientation
    applied), padded."""
    from PIL import Image

    from pipeline.features_beam import DistinctImagesByShapeFn

    fn = DistinctImagesByShapeFn(64, 96, 32, batch_size=2)
    wide, square = encode(make_scene(0, (120, 80))[0]), encode(make_scene(1, (70, 70))[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rotated = encode(make_scene(2, (120, 80))[0], "JPEG", exif=exif.tobytes())
    # 120 x 80 -> 96 x 64 (long side capped), padded 64 high x 96 wide; 70 x 70 -> 64 x 64; rotated: 96 x 64 high
    assert [fn.padded_shape_of(data) for data in (wide, square, rotated, b"junk", b"", None)] == [
        (64, 96), (64, 64), (96, 64), None, None, None]


def test_distinct_images_by_shape_emits_each_image_once_in_runs_of_one_shape():
    """A group of the shuffle: every copy after an image's first readable one is dropped, and the images leave in
    runs of ``batch_size`` of one padded shape (a shape's leftovers after the runs), so RunInference's batches of
    consecutive elements mostly hold one shape; an image met only in unreadable row groups comes last, with why."""
    from pipeline.features_beam import DistinctImagesByShapeFn

    fn = DistinctImagesByShapeFn(64, 96, 32, batch_size=2)
    sizes = {"w": (120, 80), "s": (70, 70), "t": (80, 120)}  # padded 64 x 96, 64 x 64, 96 x 64
    data = {f"{kind}{i}": encode(make_scene(i, size)[0]) for kind, size in sizes.items() for i in range(1, 6)}
    gone = "part-1.parquet row group 0: bad page"
    order = ["w1", "s1", "w2", "w1", "t1", "w3", "s2", "w4", "w2", "t2", "w5", "s3", "t1"]
    rows = [(name, data[name]) for name in order]
    rows[5:5] = [("lost", gone), ("saved", gone), ("junk", b"junk"), ("lost", gone), ("junk", b"junk")]
    rows += [("saved", data["t3"]), ("w3", gone), ("empty", b"")]
    out = list(fn.process((7, iter(rows))))
    assert sorted(name for name, _ in out) == sorted(set(order) | {"lost", "saved", "junk", "empty"})
    assert out[-1] == ("lost", gone) and dict(out)["saved"] == data["t3"] and dict(out)["w3"] == data["w3"]
    shapes = [fn.padded_shape_of(image) for _, image in out[:-1]]
    w, s, t = (64, 96), (64, 64), (96, 64)
    assert shapes == [w, w, s, s, w, w, t, t, None, None, w, s, t]  # runs of 2 as they fill, then the leftovers


def test_extract_regions_shuffles_the_image_bytes_once():
    """ExtractRegions groups the rows once (by a bucket of their image_id, all copies together) and nothing else
    shuffles them: no GroupByKey, GroupIntoBatches, Reshuffle or stateful DoFn besides that one."""
    from apache_beam.pipeline import PipelineVisitor
    from apache_beam.transforms import userstate

    shuffles = (beam.GroupByKey, beam.GroupIntoBatches, beam.GroupIntoBatches.WithShardedKey, beam.Reshuffle,
                beam.transforms.util.ReshufflePerKey, beam.CoGroupByKey, beam.CombinePerKey)

    class Shuffles(PipelineVisitor):
        def __init__(self):
            self.labels = []

        def enter_composite_transform(self, node):
            self.visit_transform(node)

        def visit_transform(self, node):
            transform = node.transform
            stateful = isinstance(transform, beam.ParDo) and userstate.is_stateful_dofn(transform.dofn)
            if node.full_label.startswith("ExtractRegions/") and (isinstance(transform, shuffles) or stateful):
                self.labels.append(node.full_label)

    pipeline = beam.Pipeline(options=PipelineOptions(DIRECT))
    rows = pipeline | beam.Create([{"image_id": "a", "image_bytes": b"junk"}])
    rows | "ExtractRegions" >> ExtractRegions(FeatureOptions(detector="demo", batch_size=4))
    visitor = Shuffles()
    pipeline.visit(visitor)
    # a shuffle's own parts (a Reshuffle's GroupByKey) are not another one
    outermost = [label for label in visitor.labels
                 if not any(label.startswith(f"{other}/") for other in visitor.labels)]
    assert outermost == ["ExtractRegions/GroupByImageBucket"]


def test_bucket_count_and_stable_buckets():
    """One bucket per 32 batches of rows, 1 to 1,024; an id's bucket is CRC-32's, the same in every process
    (``hash()`` of a str is not)."""
    from pipeline.features_beam import bucket_count, image_bucket

    assert [bucket_count(rows, 64) for rows in (0, 2047, 4096, 10 ** 6, 10 ** 9)] == [1, 1, 2, 488, 1024]
    assert [image_bucket(image_id(bytes([i])), 1024) for i in range(4)] == [391, 16, 358, 224]
    assert len({image_bucket(image_id(bytes([i])), 16) for i in range(200)}) == 16


def test_the_local_runner_refuses_a_beam_output_finished_or_killed(tmp_path, capsys):
    """`lait features` into a Beam run's folder would add its shards beside Beam's (every row twice) and overwrite
    its stats.json: refused, whether the Beam run finished, was killed after or before renaming its shards, or
    predates the Beam form's run.json."""
    import shutil

    import pytest

    from lait import cli
    from pipeline.features import extract_regions

    weights = _weights(tmp_path)
    write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(2)])
    out = tmp_path / "features"
    run(["--input", str(tmp_path / "filter"), "--output", str(out), "--detector", "demo", "--weights", weights,
         "--min-boxes", "2", "--max-boxes", "5"] + DIRECT)
    assert json.loads((out / "run.json").read_text())["runner"] == "beam"
    options = FeatureOptions(detector="demo", weights=weights, num_workers=0, min_boxes=2, max_boxes=5)
    local = ["features", "--input", str(tmp_path / "filter"), "--output", str(out), "--detector", "demo",
             "--weights", weights, "--num-workers", "0", "--no-progress"]
    assert cli.main(local) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lait features: error: {out} holds files lait features did not write (regions/part-")
    assert err.count("\n") == 1
    (out / "stats.json").unlink()  # killed after renaming its shards
    with pytest.raises(ValueError, match="did not write"):
        extract_regions(str(tmp_path / "filter"), str(out), options)
    for sub in ("regions", "rejected"):  # killed before: only Beam's temporary folders
        shutil.rmtree(out / sub)
        (out / sub / "beam-temp-part-0123").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds a run of the Beam form"):
        extract_regions(str(tmp_path / "filter"), str(out), options)
    (out / "run.json").unlink()  # a finished Beam run from before it wrote run.json
    (out / "stats.json").write_text(json.dumps({"stage": "features", "in": 2, "kept": 2, "rejected": 0}))
    with pytest.raises(ValueError, match="stats.json without run.json"):
        extract_regions(str(tmp_path / "filter"), str(out), options)
    assert not (out / "shards").exists() and not (out / "run.json").exists()
    # another stage's folder given as --output is named for what it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "stats.json").write_text(json.dumps({"stage": "filter", "in": 2, "kept": 2, "rejected": 0}))
    with pytest.raises(ValueError, match=f"{other} holds a finished filter run; use a new --output"):
        extract_regions(str(tmp_path / "filter"), str(other), options)


def test_beam_counts_a_row_group_with_corrupted_pages_as_rejects(tmp_path):
    """The Beam form reads row group by row group: one whose pages are corrupted (footer intact) leaves as
    ``row_group_unreadable`` rejects, as in the local runner; with its ids unreadable too, a ValueError names it."""
    import pytest

    from tests.features.parquet_rot import corrupt_pages

    weights = _weights(tmp_path)
    ids = write_pairs(tmp_path / "filter", [encode(make_scene(i)[0]) for i in range(6)], duplicate_first=False,
                      row_group_size=2)
    file = tmp_path / "filter" / "pairs" / "part-00000.parquet"
    corrupt_pages(file, 2, "image_bytes")
    argv = ["--input", str(tmp_path / "filter"), "--detector", "demo", "--weights", weights, "--min-boxes", "2",
            "--max-boxes", "5"] + DIRECT
    stats = run(argv + ["--output", str(tmp_path / "features")])
    assert (stats["in"], stats["kept"], stats["rejected_by_reason"]) == (6, 4, {"row_group_unreadable": 2})
    rejected = schemas.read_table(str(tmp_path / "features" / "rejected"), "rejected").to_pylist()
    assert {r["image_id"] for r in rejected} == set(ids[4:])
    assert all(r["detail"].startswith(f"{file} row group 2: ") for r in rejected)
    corrupt_pages(file, 1, "image_id", "image_bytes", skip=0)
    with pytest.raises(ValueError, match="row group 1 is unreadable, its image ids too"):
        run(argv + ["--output", str(tmp_path / "again")])


def _whole_row_group_rows(self, item):
    """``ReadRowGroupsFn.process`` before it streamed (the baseline): the row group read whole, the file opened with
    pyarrow's defaults, a group that cannot be read leaving whole as ``row_group_unreadable``."""
    import pyarrow as pa

    from pipeline.features import INPUT_COLUMNS, _open_parquet, _why, read_image_ids

    file, group = item
    parquet = _open_parquet(self.dataset, file)
    try:
        table = parquet.read_row_group(group, columns=INPUT_COLUMNS)
    except (pa.ArrowException, OSError) as exc:
        detail = f"{file} row group {group}: {_why(exc)}"
        for image in read_image_ids(parquet, file, group):
            yield {"image_id": image, "image_bytes": detail}
        return
    yield from table.to_pylist()


def _write_rows(path, rows, row_group_size: int, rows_per_page: int | None = None):
    """``(image_id, image_bytes)`` rows as one Parquet file: as lait writes images (``schemas.write_table``: pages of
    at most 64 rows, so these small scenes' groups are one page each) or in pages of ``rows_per_page`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image_id": pa.array([r[0] for r in rows], pa.string()),
                      "image_bytes": pa.array([r[1] for r in rows], pa.binary())})
    path.parent.mkdir(parents=True, exist_ok=True)
    options = parquet_options(table.schema) if rows_per_page is None else {
        "use_dictionary": ["image_id"], "max_rows_per_page": rows_per_page}
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd", **options)


def _beam_run(tmp_path, monkeypatch, name, weights, batch_size=4):
    """``run`` on ``tmp_path/filter`` into ``tmp_path/name`` with RunInference's batches pinned to ``batch_size`` (its
    adaptive sizes follow the clock, so two runs' batches and float results differ by timing alone): the stats,
    the regions and rejected rows in file order, and the detector's batches (each image's pixels, hashed)."""
    import hashlib

    import pyarrow.parquet as pq

    from pipeline import features_beam

    batches = []
    detect = features_beam.RegionModelHandler.run_inference

    def recording(self, batch, model, inference_args=None):
        batches.append([hashlib.sha256(item.pixels.numpy().tobytes()).hexdigest() for item in batch])
        return detect(self, batch, model, inference_args)

    monkeypatch.setattr(features_beam.RegionModelHandler, "run_inference", recording)
    monkeypatch.setattr(features_beam.RegionModelHandler, "batch_elements_kwargs",
                        lambda self: {"min_batch_size": batch_size, "max_batch_size": batch_size})
    out = tmp_path / name
    stats = run(["--input", str(tmp_path / "filter"), "--output", str(out), "--detector", "demo", "--weights", weights,
                 "--min-boxes", "2", "--max-boxes", "5", "--batch-size", str(batch_size)] + DIRECT)
    rows = {kind: [row for file in sorted((out / kind).glob("*.parquet")) for row in pq.read_table(file).to_pylist()]
            for kind in ("regions", "rejected")}
    return stats, rows["regions"], rows["rejected"], batches


@pytest.mark.parametrize("rows_per_page", [None, 2])
def test_beam_streams_its_row_groups_and_writes_what_whole_reads_wrote(tmp_path, monkeypatch, rows_per_page):
    """The Beam form's work items are row groups; a worker thread streams each (``RowGroupStream``, batches of
    ``piece_size(--batch-size)`` rows, as the local runner's workers do) and never reads one whole
    (``read_row_group`` of ``image_bytes`` fails here). Two files of row groups of 5 (lait's one page a group, and
    pages of 2 rows), copies of an image in one group, in two groups and in two files, rows without an id, with
    null, empty or undecodable bytes, images of several shapes: the stats, the regions and rejected rows (file
    order, every value) and the detector's batches are those of a run that read each group whole, as before."""
    import pyarrow.parquet as pq

    from pipeline import features_beam
    from pipeline.features import piece_size

    weights = _weights(tmp_path)
    sizes = [(64 + 9 * i, 64) if i % 2 else (64, 64 + 5 * i) for i in range(9)]
    images = [(image_id(data), data) for data in (encode(make_scene(i, size)[0], "JPEG" if i % 3 else "PNG")
                                                  for i, size in enumerate(sizes))]
    a, b, c, d, e, f, g, h, i = images
    bad = [(None, images[3][1]), ("junk", b"junk"), ("empty", b""), ("missing", None)]
    files = {"part-00000.parquet": [a, b, b, c, a, bad[0], d, bad[1], bad[2], e, f, bad[3], g],
             "part-00001.parquet": [a, g, bad[1], h, i, c, b]}
    for name, rows in files.items():
        _write_rows(tmp_path / "filter" / name, rows, row_group_size=5, rows_per_page=rows_per_page)
    groups = {name: pq.ParquetFile(tmp_path / "filter" / name).metadata.num_row_groups for name in files}
    assert groups == {"part-00000.parquet": 3, "part-00001.parquet": 2}
    monkeypatch.setattr(features_beam, "bucket_count", lambda rows, batch_size: 2)  # two groups of the shuffle

    with monkeypatch.context() as before:
        before.setattr(features_beam.ReadRowGroupsFn, "process", _whole_row_group_rows)
        whole = _beam_run(tmp_path, before, "whole", weights)

    whole_reads, streams = [], []
    read_row_group, iter_batches = pq.ParquetFile.read_row_group, pq.ParquetFile.iter_batches

    def guarded(self, group, columns=None, **kwargs):
        whole_reads.append((group, columns))
        assert columns is not None and "image_bytes" not in columns, "a row group's images read whole"
        return read_row_group(self, group, columns=columns, **kwargs)

    def counted(self, batch_size=65536, row_groups=None, columns=None, **kwargs):
        streams.append((tuple(row_groups), batch_size, tuple(columns)))
        return iter_batches(self, batch_size=batch_size, row_groups=row_groups, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", guarded)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    streamed = _beam_run(tmp_path, monkeypatch, "streamed", weights)
    assert whole_reads == []
    assert sorted(streams) == sorted([((group,), piece_size(4), ("image_id", "image_bytes"))
                                      for name in files for group in range(groups[name])])  # each group once
    stats, regions, rejected, batches = streamed
    assert (stats["in"], stats["kept"], stats["rejected_by_reason"]) == (
        13, 9, {"image_id_missing": 1, "image_undecodable": 1, "image_missing": 2})
    assert sorted(row["image_id"] for row in regions) == sorted(image for image, _ in images)
    assert {(row["image_id"], row["reason"]) for row in rejected} == {
        ("junk", "image_undecodable"), ("empty", "image_missing"), ("missing", "image_missing"),
        (None, "image_id_missing")} and len(rejected) == 4
    assert stats == whole[0]
    assert regions == whole[1]  # every value, in file order
    assert rejected == whole[2]
    assert batches == whole[3]  # the same images in the same batches, in the same order


def test_beam_read_holds_a_batch_of_its_row_group_not_the_group(tmp_path, monkeypatch):
    """``ReadRowGroupsFn`` on one row group of 256 rows of 64 KB (16 MB) in pages of 4, its rows taken one by one as
    Beam hands them on: Arrow holds a few batches of 4 while the group passes, never more as it goes (a whole
    read holds the group, ``read_row_group`` below), and the rows are the group's, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import pipeline.features as features
    from pipeline.features_beam import ReadRowGroupsFn

    monkeypatch.setattr(features, "READ_BUFFER_BYTES", 64 << 10)  # reads of 4 MiB would be a quarter of the group
    rng = np.random.default_rng(0)
    rows = [(f"img{i}", rng.bytes(64 << 10)) for i in range(256)]
    file = tmp_path / "in" / "part-00000.parquet"
    _write_rows(file, rows, row_group_size=256, rows_per_page=4)
    fn = ReadRowGroupsFn(str(tmp_path / "in"), 4)
    before = pa.total_allocated_bytes()
    held, got = [], []
    for row in fn.process((str(file), 0)):
        got.append((row["image_id"], row["image_bytes"]))
        held.append(pa.total_allocated_bytes() - before)
    assert got == rows
    piece = 4 * (64 << 10)
    assert max(held) < 16 * piece, max(held)  # 4 MB: a quarter of the group (about 2 MB is pyarrow's reader)
    assert max(held) - min(held) <= piece, held  # it does not grow as the group streams past
    whole = features._open_parquet(str(tmp_path / "in"), str(file)).read_row_group(0, columns=features.INPUT_COLUMNS)
    assert pa.total_allocated_bytes() - before >= 256 * (64 << 10)
    del whole
    assert pq.ParquetFile(file).metadata.row_group(0).num_rows == 256


def test_beam_stream_failing_inside_a_row_group_keeps_the_rows_read_before_and_rejects_the_rest(tmp_path):
    """Pages of 2 rows, the last quarter of one row group's ``image_bytes`` rotten: as in the local runner, the rows
    the stream gave before the rot keep their bytes and the rest of the group leaves as ``row_group_unreadable``
    (a whole read rejected the whole group; lait's one-page groups still are, see above), every row once, in
    order, the books balanced."""
    from tests.features.parquet_rot import corrupt_pages

    import pyarrow.parquet as pq

    from pipeline.features_beam import ReadRowGroupsFn

    rng = np.random.default_rng(1)
    rows = [(f"img{i}", rng.bytes(30000)) for i in range(64)]
    file = tmp_path / "in" / "part-00000.parquet"
    _write_rows(file, rows, row_group_size=64, rows_per_page=2)
    group = pq.ParquetFile(file).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "image_bytes")
    corrupt_pages(file, 0, "image_bytes", skip=chunk.total_compressed_size * 3 // 4)
    out = list(ReadRowGroupsFn(str(tmp_path / "in"), 4).process((str(file), 0)))
    assert [row["image_id"] for row in out] == [image for image, _ in rows]
    kept = [row for row in out if isinstance(row["image_bytes"], bytes)]
    rejected = [row for row in out if isinstance(row["image_bytes"], str)]
    assert out == kept + rejected and rejected and 0 < len(kept) <= 48, len(kept)  # the rot begins in row 47's page
    assert [row["image_bytes"] for row in kept][:-2] == [data for _, data in rows][:len(kept) - 2]
    assert all(row["image_bytes"].startswith(f"{file} row group 0: ") for row in rejected)


def test_both_runners_apply_size_overrides_to_demo_weights(tmp_path):
    """--min-size/--max-size with demo weights: the local runner kept the file's sizes while Beam resized to the
    options', so the two wrote other regions. Both use the options' now, and record the sizes they ran at."""
    from pipeline.features import extract_regions

    weights = _weights(tmp_path)  # trained at 64/96
    write_pairs(tmp_path / "filter", [encode(make_scene(i, (200, 150))[0]) for i in range(2)], duplicate_first=False)
    sizes = ["--min-size", "40", "--max-size", "60"]
    run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "beam"), "--detector", "demo",
         "--weights", weights, "--min-boxes", "2", "--max-boxes", "4", *sizes] + DIRECT)
    options = FeatureOptions(detector="demo", weights=weights, num_workers=0, min_boxes=2, max_boxes=4,
                             detector_config={"min_size": 40, "max_size": 60})
    assert options.load_detector().spec.input_size(200, 150) == (53, 40)
    extract_regions(str(tmp_path / "filter"), str(tmp_path / "local"), options)
    for name in ("beam", "local"):
        config = json.loads((tmp_path / name / "run.json").read_text())["detector_config"]
        assert (config["min_size"], config["max_size"]) == (40, 60), name
    beam_rows, local_rows = ({row["image_id"]: row for row in schemas.read_table(str(tmp_path / name / "regions"),
                                                                                  "regions").to_pylist()}
                             for name in ("beam", "local"))
    assert beam_rows.keys() == local_rows.keys() and len(beam_rows) == 2
    for image, row in beam_rows.items():
        assert row["num_boxes"] == local_rows[image]["num_boxes"] and row["class_ids"] == local_rows[image]["class_ids"]
        np.testing.assert_allclose(row["boxes"], local_rows[image]["boxes"], atol=1e-3)


def test_missing_weights_stop_the_beam_form_before_the_output_is_touched(tmp_path, capsys):
    """Missing or absent weights are found on the driver, before the output is prepared or the pipeline starts,
    and `python -m pipeline.features` says so in one line (status 2), not a traceback."""
    import pytest

    from model.detectors import WeightsNotFoundError
    from pipeline.features import main

    write_pairs(tmp_path / "filter", [encode(make_scene(0)[0])])
    base = ["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "out"), "--detector", "demo"] + DIRECT
    with pytest.raises(WeightsNotFoundError, match="no weights file at"):
        run([*base, "--weights", str(tmp_path / "nothing.safetensors")])
    assert main([*base, "--weights", str(tmp_path / "nothing.safetensors")]) == 2
    assert main(base) == 2  # no --weights for demo
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in "\n".join(err)
    assert err[0].startswith("python -m pipeline.features: error: no weights file at") and "--weights PATH" in err[1]
    assert not (tmp_path / "out").exists()


def test_the_beam_form_reads_an_older_empty_crawl_without_candidates_as_an_empty_input(tmp_path):
    """As the local runner: a finished crawl that kept nothing, from before crawls always wrote candidates/, is the
    empty run an empty candidates/ gives (its rejected/ never read as images)."""
    from crawler import output

    weights = _weights(tmp_path)
    stats = {}
    for name in ("old", "new"):
        crawl = tmp_path / name / "crawl"
        row = schemas.rejected_row("crawl", "image_too_small", "300x200", page_url="http://127.0.0.1/p0.html",
                                   image_url="http://127.0.0.1/img/0.jpg", candidate_id="c0")
        schemas.write_table(schemas.to_table([row], "rejected"), str(crawl / "rejected" / "part-00000.parquet"), "rejected")
        (crawl / "stats.json").write_text(json.dumps({"stage": "crawl", "in": 1, "kept": 0, "rejected": 1}))
        if name == "new":
            output.ensure_candidates(str(crawl))  # what crawls write now
        stats[name] = run(["--input", str(crawl), "--output", str(tmp_path / name / "features"), "--detector", "demo",
                           "--weights", weights] + DIRECT)
    assert stats["old"] == stats["new"]
    assert (stats["old"]["in"], stats["old"]["kept"], stats["old"]["rejected"]) == (0, 0, 0)
    assert not (tmp_path / "old" / "crawl" / "candidates").exists()


def test_the_beam_form_records_the_topk_it_used(tmp_path):
    """A --topk above the detector's class count stores every class, and run.json and classes.json record that
    count, as the local runner's do (``effective_topk``), not the number asked for."""
    weights = _weights(tmp_path)
    write_pairs(tmp_path / "filter", [encode(make_scene(0)[0])])
    out = tmp_path / "features"
    run(["--input", str(tmp_path / "filter"), "--output", str(out), "--detector", "demo", "--weights", weights,
         "--min-boxes", "2", "--max-boxes", "3", "--topk", "50"] + DIRECT)
    assert json.loads((out / "run.json").read_text())["topk"] == len(CLASS_NAMES)
    assert json.loads((out / "classes.json").read_text())["topk"] == len(CLASS_NAMES)
    boxes = schemas.read_table(str(out / "regions"), "regions").column("topk_class_ids").to_pylist()[0]
    assert {len(box) for box in boxes} == {len(CLASS_NAMES)}


def test_the_beam_form_refuses_bad_arguments_before_the_output_is_touched(tmp_path, capsys):
    """An option of the local runner only (--images-per-shard) or a misspelt one is neither the Beam form's nor
    Beam's; an unknown runner, a device torch does not know and fp16 on the CPU would fail on every worker: each
    is one line (status 2) before the output is touched, not a run that ignores it or fails in its workers."""
    from pipeline.features import main

    write_pairs(tmp_path / "filter", [encode(make_scene(0)[0])])
    base = ["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--weights", _weights(tmp_path)] + DIRECT
    bad = [(["--images-per-shard", "100"], "unknown argument(s) --images-per-shard 100"),
           (["--min_boxes", "2"], "did you mean --min-boxes?"),
           (["--runner", "NopeRunner"], "Beam options: Unexpected pipeline runner: NopeRunner"),
           (["--device", "tpu"], "--device 'tpu' is not a torch device"),
           (["--device", "cpu", "--precision", "fp16"], "--precision fp16: fp16 autocast is a GPU mode")]
    for extra, message in bad:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m pipeline.features: error: ") and message in err[0], err
        assert not (tmp_path / "out").exists(), extra
