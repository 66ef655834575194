"""The relevance model reads its pairs in one order, however the filter stage sharded them."""
import schemas
from filters.relevance.data import read_pairs


def _write(folder, shards):
    for index, ids in enumerate(shards):
        rows = [{"pair_id": i, "image_id": f"img-{i}", "caption": f"a red circle {i}", "image_bytes": b"x"}
                for i in ids]
        schemas.write_table(schemas.to_table(rows, "pairs"), str(folder / "pairs" / f"part-{index:05d}.parquet"))


def test_same_pairs_same_order_whatever_the_sharding(tmp_path):
    _write(tmp_path / "a", [["p3", "p1"], ["p4", "p0", "p2"]])
    _write(tmp_path / "b", [["p2", "p4"], ["p0"], ["p1", "p3"]])
    a, b = read_pairs(str(tmp_path / "a")), read_pairs(str(tmp_path / "b"))
    assert [r["pair_id"] for r in a] == ["p0", "p1", "p2", "p3", "p4"]
    assert a == b


def test_limit_takes_the_smallest_pair_ids(tmp_path):
    _write(tmp_path / "a", [["p3", "p1"], ["p4", "p0", "p2"]])
    assert [r["pair_id"] for r in read_pairs(str(tmp_path / "a"), limit=3)] == ["p0", "p1", "p2"]
    assert len(read_pairs(str(tmp_path / "a"), limit=10)) == 5
