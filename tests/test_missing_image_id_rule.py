"""One "missing image id" rule (``schemas.missing_image_id``) for ``lait features`` and ``lait audit``.

The audit recounts what the features stage counted as ``in`` (distinct image ids plus each row without one); if
the two decided "missing" differently, a sound run would fail its audit. The rule lives in ``schemas``, free of
torch, so the audit shares it rather than copies it.
"""
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas

#: Ids with no image behind them (null, empty, whitespace of every kind ``str.strip`` knows) and ids that are ids.
MISSING = [None, "", " ", "  ", "\t", "\n", " \t\r\n", "\xa0", "\u3000"]
PRESENT = ["img-1", "a", " a ", "\ta", "0", "é", "a b"]


@pytest.mark.parametrize("image_id", MISSING)
def test_blank_or_null_ids_are_missing(image_id):
    assert schemas.missing_image_id(image_id)


@pytest.mark.parametrize("image_id", PRESENT)
def test_ids_with_text_are_present(image_id):
    assert not schemas.missing_image_id(image_id)


def _write_pairs(folder, ids):
    """A pairs dataset (the features stage's usual input) holding ``ids``, nulls allowed in ``image_id`` (as a file
    written by another tool may hold them), in two row groups."""
    schema = schemas.pairs_schema()
    schema = schema.set(schema.get_field_index("image_id"), schema.field("image_id").with_nullable(True))
    n = len(ids)
    table = pa.table({
        "pair_id": [f"p{i}" for i in range(n)], "image_id": ids, "caption": ["a caption"] * n,
        "image_bytes": [b"not decoded here"] * n,
    })
    table = pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(n, f.type)
                      for f in schema}, schema=schema)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=max(1, n // 2))
    return str(folder)


def test_audit_counts_the_images_the_features_stage_reads(tmp_path):
    """Over every kind of id, twice over (repeats are one image; every row without an id is one reject), the
    audit's recount of a features stage's ``in`` equals what ``plan_shards`` planned and rejected."""
    import demo.audit as audit
    from pipeline.features import plan_shards

    ids = (MISSING + PRESENT) * 2
    dataset = _write_pairs(tmp_path / "filter" / "pairs", ids)
    shards, null_ids = plan_shards(dataset, 4)
    assert null_ids == 2 * len(MISSING)
    assert sum(shard.size for shard in shards) == len(PRESENT)
    assert audit._images_read(dataset, "pairs") == len(PRESENT) + null_ids


def test_the_beam_runner_rejects_the_same_rows():
    """The Beam features pipeline keys rows by image id and rejects those without one, by the same rule."""
    pytest.importorskip("apache_beam")
    from pipeline.features_beam import KeyRowsByImageFn

    keyer = KeyRowsByImageFn(buckets=4)
    for image_id in MISSING + PRESENT:
        out = list(keyer.process({"image_id": image_id, "image_bytes": b"x"}))
        rejected = [o for o in out if getattr(o, "tag", None) is not None]
        assert bool(rejected) == schemas.missing_image_id(image_id), image_id
        if rejected:
            assert rejected[0].value["reason"] == "image_id_missing"


def test_importing_the_audit_loads_no_torch():
    """``lait audit`` runs where no detector does (a laptop checking a run's books): it must not pull in torch."""
    code = ("import sys, demo.audit, schemas; schemas.missing_image_id('x'); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'model.', 'pipeline.features'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
