"""`lait audit` of a stage whose --input was one Parquet file: the books are kept against that file alone.

Before, the audit cut the file path to its folder (and ``…/candidates`` to the run folder's ``crawl/``), so a
filter run over one shard of a two-shard crawl was audited against both shards: ``in_equals_upstream_kept``
failed a correct run, and the lineage checks took ids from the shard the stage never read.
"""
import json
import os
import shutil

import pyarrow as pa
import pytest

import schemas
from demo import audit
from filters.synthetic import candidate, make_image
from lait import cli

CAPTIONS = ["a brown dog running on the sandy beach", "a red bicycle leaning against a brick wall",
            "two children playing football in a green park", "an old lighthouse on a rocky coast at night"]


def _shard(path, first: int) -> list[str]:
    """A candidates shard of two rows (images 400x400, English captions); returns its candidate ids."""
    rows = [candidate(make_image(first + i, 400, 400), CAPTIONS[first + i], first + i, page=first + i)
            for i in range(2)]
    schemas.write_table(schemas.to_table(rows, "candidates"), str(path), "candidates")
    return [row["candidate_id"] for row in rows]


@pytest.fixture(params=["inside", "outside"])
def one_shard_run(request, tmp_path):
    """RUN/crawl/candidates/ with two shards (or two shards in a folder outside the run), and RUN/filter, a real
    `lait filter` over the first shard only; returns (run, ids of the shard read, ids of the other)."""
    run = tmp_path / "run"
    shards = run / "crawl" / "candidates" if request.param == "inside" else tmp_path / "shards"
    shards.mkdir(parents=True)
    read, other = _shard(shards / "part-00000.parquet", 0), _shard(shards / "part-00001.parquet", 2)
    if request.param == "inside":
        (run / "crawl" / "stats.json").write_text(json.dumps(
            {"stage": "crawl", "in": 4, "kept": 4, "rejected": 0, "rejected_by_reason": {}}))
    assert cli.main(["filter", "--input", str(shards / "part-00000.parquet"), "--output", str(run / "filter")]) == 0
    return run, read, other


def _filter(result) -> dict:
    return next(s for s in result["stages"] if s["name"] == "filter")


def test_a_filter_over_one_shard_is_audited_against_that_shard(one_shard_run, capsys):
    run, read, other = one_shard_run
    stats = json.loads((run / "filter" / "stats.json").read_text())
    assert stats["in"] == len(read)  # the stage read the one shard
    result = audit.audit_run(str(run))
    stage = _filter(result)
    assert result["ok"], [c for c in stage["checks"] if not c["ok"]]
    assert os.path.basename(stage["upstream"]) == "part-00000.parquet"
    assert {"in_equals_upstream_kept", "rejected_candidate_ids_upstream"} <= {c["check"] for c in stage["checks"]}
    assert cli.main(["audit", str(run)]) == 0 and "NOT BALANCED" not in capsys.readouterr().out


def test_an_id_of_the_shard_not_read_is_still_caught(one_shard_run):
    """Lineage reads exactly the file read: a pair naming a candidate of the other shard (which the whole folder
    holds) fails ``pairs_candidate_ids_upstream``."""
    run, read, other = one_shard_run
    pairs = run / "filter" / "pairs"
    table = schemas.read_table(str(pairs), "pairs")
    assert table.num_rows >= 1, "the filter kept no pair to plant an id in"
    ids = table.column("candidate_id").to_pylist()
    ids[0] = other[0]
    column = table.schema.get_field_index("candidate_id")
    table = table.set_column(column, table.schema.field(column), pa.array(ids, table.schema.field(column).type))
    shutil.rmtree(pairs)
    schemas.write_table(table, str(pairs / "part-00000.parquet"), "pairs")
    result = audit.audit_run(str(run))
    failed = {c["check"] for c in _filter(result)["checks"] if not c["ok"]}
    assert not result["ok"] and failed == {"pairs_candidate_ids_upstream"}, failed
