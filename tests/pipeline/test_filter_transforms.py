"""TestPipeline tests of each composite transform of the filter stage, and a DoFn called directly."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

import schemas
from filters.dedup import deduplicate
from filters.rules import RuleConfig
from filters.synthetic import candidate, make_image
from pipeline.filter import (AggregatePairs, ApplyRuleFilters, ApplyRuleFiltersDoFn, DropNearDuplicates,
                             DropSharedCaptions, KeepBestTextPerImage, ReadCandidates)
from pipeline.options import make_runner


def _pipeline():
    return BeamTestPipeline(runner=make_runner(PipelineOptions([])), options=PipelineOptions([]))


@pytest.fixture(scope="module")
def photos():
    return [make_image(100 + i, 320, 320) for i in range(4)]


def test_apply_rule_filters(photos):
    rows = [candidate(photos[0], "a brown dog running on the beach", 0),
            candidate(photos[1], "ein schwarzer Hund im Garten", 1),
            candidate(photos[2], "IMG_0001.jpg photo of me", 2),
            candidate(make_image(5, 120, 120), "a red bicycle against a brick wall", 3)]
    with _pipeline() as p:
        out = p | beam.Create(rows) | ApplyRuleFilters(RuleConfig())
        assert_that(out.pairs | "Captions" >> beam.Map(lambda r: (r["caption"], r["text_source"])),
                    equal_to([("a brown dog running on the beach", "alt")]), label="pairs")
        assert_that(out.rejected | "Reasons" >> beam.Map(lambda r: (r["stage"], r["reason"])),
                    equal_to([("filter", "lang_not_target"), ("filter", "caption_is_filename"),
                              ("filter", "image_too_small")]), label="rejected")


def _pair(pid, image, caption, phash, quality):
    return {"pair_id": pid, "candidate_id": f"c{pid}", "image_id": image, "caption": caption, "phash": phash,
            "relevance": None, "text_quality": quality}


PAIRS = [
    _pair("s1", "a", "Product photo", "f000000000000000", 0.5),
    _pair("s2", "b", "product photo!", "0f00000000000000", 0.5),
    _pair("s3", "c", "Product  photo", "00f0000000000000", 0.5),
    _pair("t1", "d", "a first caption", "000f000000000000", 0.2),
    _pair("t2", "d", "a better caption", "000f000000000000", 0.9),
    _pair("n1", "e", "a lake at dawn", "0000f00000000000", 0.9),
    _pair("n2", "f", "a lake at dusk", "0000f00000000003", 0.4),
    _pair("u1", "g", "something else", "00000f0000000000", 0.4),
]


def _ids(rows, label):
    return rows | f"Ids{label}" >> beam.Map(lambda r: r["pair_id"])


def test_drop_shared_captions():
    with _pipeline() as p:
        out = p | beam.Create(PAIRS) | DropSharedCaptions(2)
        assert_that(_ids(out.rejected, "R"), equal_to(["s1", "s2", "s3"]), label="rejected")
        assert_that(_ids(out.kept, "K"), equal_to(["t1", "t2", "n1", "n2", "u1"]), label="kept")


def test_keep_best_text_per_image():
    with _pipeline() as p:
        out = p | beam.Create(PAIRS) | KeepBestTextPerImage()
        assert_that(out.rejected | beam.Map(lambda r: (r["pair_id"], r["reason"])),
                    equal_to([("t1", "image_has_better_text")]), label="rejected")


def test_drop_near_duplicates():
    with _pipeline() as p:
        out = p | beam.Create(PAIRS[5:]) | DropNearDuplicates(4)
        assert_that(out.rejected | beam.Map(lambda r: (r["pair_id"], r["reason"])),
                    equal_to([("n2", "near_duplicate_image")]), label="rejected")
        assert_that(_ids(out.kept, "K"), equal_to(["n1", "u1"]), label="kept")


def test_aggregate_pairs_matches_the_in_memory_steps():
    kept, rejected = deduplicate(PAIRS, max_images_per_caption=2, phash_distance=4)
    with _pipeline() as p:
        out = p | beam.Create(PAIRS) | AggregatePairs(2, 4)
        assert_that(_ids(out["kept"], "K"), equal_to([r["pair_id"] for r in kept]), label="kept")
        assert_that(out["rejected"] | beam.Map(lambda r: (r["pair_id"], r["reason"])),
                    equal_to([(r["pair_id"], r["reason"]) for r in rejected]), label="rejected")



GROUPED_WITH_BYTES = []


def test_aggregate_pairs_groups_without_image_bytes_and_gives_them_back(monkeypatch):
    """The steps that group pairs never hold image bytes (one boilerplate caption on many images is one group);
    every kept pair comes out with its own bytes, and a candidate read twice is kept once with them."""
    import filters.dedup as dedup
    GROUPED_WITH_BYTES.clear()
    for name in ("split_shared_caption", "split_best_text"):
        step = getattr(dedup, name)

        def watched(pairs, *args, _step=step):
            pairs = list(pairs)
            GROUPED_WITH_BYTES.extend(p["pair_id"] for p in pairs if "image_bytes" in p)
            return _step(pairs, *args)
        monkeypatch.setattr(dedup, name, watched)
    pairs = [{**pair, "image_bytes": f"bytes of {pair['image_id']}".encode()} for pair in PAIRS]
    pairs.append(dict(pairs[-1]))  # u1 read twice
    kept, _ = deduplicate(PAIRS, max_images_per_caption=2, phash_distance=4)
    with _pipeline() as p:
        out = p | beam.Create(pairs) | AggregatePairs(2, 4)
        assert_that(out["kept"] | beam.Map(lambda r: (r["pair_id"], r["image_bytes"])),
                    equal_to([(r["pair_id"], f"bytes of {r['image_id']}".encode()) for r in kept]), label="kept")
        assert_that(out["rejected"] | beam.Map(lambda r: "image_bytes" in r), equal_to([False] * (len(pairs) - len(kept))),
                    label="rejected")
    assert GROUPED_WITH_BYTES == []

def test_read_candidates_rejects_invalid_utf8(tmp_path, photos):
    good = [candidate(photos[0], f"a dog on the beach {i}", i) for i in range(3)]
    table = schemas.to_table(good, "candidates")
    # Arrow accepts invalid UTF-8 in a string column when built from raw buffers; crawlers can write it.
    alt = table.column("alt").combine_chunks().cast(pa.binary()).to_pylist()
    alt[1] = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    broken = pa.array(alt, pa.binary()).view(pa.string())
    table = table.set_column(table.schema.get_field_index("alt"), table.schema.field("alt"), broken)
    path = tmp_path / "candidates" / "part-00000.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, row_group_size=2)
    with _pipeline() as p:
        out = p | ReadCandidates([str(path)])
        assert_that(out.candidates | beam.Map(lambda r: r["alt"]),
                    equal_to(["a dog on the beach 0", "a dog on the beach 2"]), label="candidates")
        assert_that(out.rejected | beam.Map(lambda r: (r["reason"], r["candidate_id"])),
                    equal_to([("invalid_utf8", good[1]["candidate_id"])]), label="rejected")


def test_rule_dofn_lifecycle_called_directly(photos):
    dofn = ApplyRuleFiltersDoFn(RuleConfig())
    dofn.setup()
    out = list(dofn.process(candidate(photos[3], "a quiet street in the morning light", 9)))
    assert len(out) == 1 and out[0]["caption"] == "a quiet street in the morning light"
    tagged = list(dofn.process(candidate(photos[3], "", 10, title=None)))
    assert tagged[0].tag == "rejected" and tagged[0].value["reason"] == "no_text"
    # a record that breaks a filter still leaves as a counted reject
    tagged = list(dofn.process({"candidate_id": "x", "alt": "a dog on the beach today", "image_bytes": 12345}))
    assert tagged[0].value["reason"] in ("filter_error", "image_corrupt", "image_too_few_bytes")
