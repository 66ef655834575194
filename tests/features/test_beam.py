"""The features stage as a Beam pipeline: ExtractRegions under TestPipeline, and run() end to end."""
import json

import apache_beam as beam
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import schemas
from model.detectors import demo
from pipeline.features import DecodeImagesFn, ExtractRegions, FeatureOptions, run
from tests.features.scenes import CLASS_NAMES, encode, image_id, make_scene, write_pairs

SMALL = {"min_size": 64, "max_size": 96, "channels": [16, 16, 32, 32, 64, 64]}
DIRECT = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _weights(tmp_path):
    torch.manual_seed(0)
    return demo.save(demo.build(SMALL, CLASS_NAMES), str(tmp_path / "demo.safetensors"))


def test_decode_fn_lifecycle_rejects_with_reason():
    fn = DecodeImagesFn(64, 96)
    good = encode(make_scene(0)[0])
    (image_id_out, decoded), = list(fn.process(("a", [good, good])))
    assert image_id_out == "a" and decoded.pixels.shape[1] == 64
    (rejected,), = [list(fn.process(("b", [b"junk"])))]
    assert rejected.tag == "rejected" and rejected.value["reason"] == "image_undecodable" and rejected.value["image_id"] == "b"


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
    regions = schemas.read_table(str(tmp_path / "features" / "regions"), "regions")
    assert regions.num_rows == 3 and regions.schema.field("features").type.value_type.list_size == 256
    assert schemas.read_table(str(tmp_path / "features" / "rejected"), "rejected").column("reason").to_pylist() == ["image_undecodable"]
    assert json.loads((tmp_path / "features" / "classes.json").read_text())["class_names"] == CLASS_NAMES


def test_beam_writes_attributes_of_an_attribute_checkpoint(tmp_path):
    """The Beam form with attribute weights: region rows carry top-k attributes; the output schema has their columns."""
    import pickle

    import numpy as np

    from model.detectors import attribute_count
    from pipeline.features import output_schema
    from tests.features.test_weights import detectron2_vg_state

    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": detectron2_vg_state(np.random.default_rng(0), he_scale=True)}, f, protocol=2)
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
    stats = run(argv + ["--output", str(killed)])
    assert stats["kept"] == 3
    regions = schemas.read_table(str(killed / "regions"), "regions")
    assert sorted(regions.column("image_id").to_pylist()) == sorted(schemas.read_table(str(done / "regions"), "regions").column("image_id").to_pylist())
    assert not list((killed / "regions").glob("beam-temp-*"))


def test_beam_regions_match_the_local_runner_on_mixed_shapes(tmp_path):
    """RunInference batches whatever arrives together; images of other padded shapes must not change an image's
    regions, so Beam and `lait features` (which batches by shape) agree image for image."""
    import numpy as np

    from pipeline.features import extract_regions

    weights = _weights(tmp_path)
    sizes = [(64 + i, 64 + i) if i % 2 else (88 + 3 * i, 64) for i in range(7)] + [(64, 100)]
    write_pairs(tmp_path / "filter", [encode(make_scene(i, size)[0]) for i, size in enumerate(sizes)], duplicate_first=False)
    run(["--input", str(tmp_path / "filter"), "--output", str(tmp_path / "beam"), "--detector", "demo",
         "--weights", weights, "--min-boxes", "2", "--max-boxes", "5", "--batch-size", "8"] + DIRECT)
    extract_regions(str(tmp_path / "filter"), str(tmp_path / "local"),
                    FeatureOptions(detector="demo", weights=weights, num_workers=0, batch_size=8, min_boxes=2, max_boxes=5))
    beam_rows, local_rows = ({row["image_id"]: row for row in schemas.read_table(str(tmp_path / name / "regions"),
                                                                                  "regions").to_pylist()}
                             for name in ("beam", "local"))
    assert beam_rows.keys() == local_rows.keys() and len(beam_rows) == len(sizes)
    for image, row in beam_rows.items():
        assert row["class_ids"] == local_rows[image]["class_ids"], image
        np.testing.assert_allclose(row["boxes"], local_rows[image]["boxes"], atol=1e-3)


def test_key_by_padded_shape_reads_only_the_header():
    """The shape key before decoding: network size from the header (EXIF orientation applied), padded."""
    from PIL import Image

    from pipeline.features_beam import KeyByPaddedShapeFn

    fn = KeyByPaddedShapeFn(64, 96, 32)
    wide, square = encode(make_scene(0, (120, 80))[0]), encode(make_scene(1, (70, 70))[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rotated = encode(make_scene(2, (120, 80))[0], "JPEG", exif=exif.tobytes())
    keys = {name: next(iter(fn.process((name, [data, data]))))
            for name, data in (("wide", wide), ("square", square), ("rotated", rotated), ("junk", b"junk"))}
    # 120 x 80 -> 96 x 64 (long side capped), padded 64 high x 96 wide; 70 x 70 -> 64 x 64; rotated: 96 x 64 high
    assert {name: key for name, (key, _) in keys.items()} == {
        "wide": "64x96", "square": "64x64", "rotated": "96x64", "junk": "unreadable"}
    assert keys["wide"][1] == ("wide", [wide])  # one copy of the bytes goes on


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
