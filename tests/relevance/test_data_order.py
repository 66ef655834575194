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


def test_training_ignores_pair_ids_row_order_and_port(tmp_path):
    """The same pairs crawled from another port, in another order, train the same model and threshold."""
    import random

    import torch

    from filters.relevance.config import TrainConfig
    from filters.relevance.train import train
    from model.relevance import load_model
    from tests.relevance.scenes import make_pairs

    rows = make_pairs(25, seed=5)
    moved = [dict(r, pair_id=f"other-{i}", candidate_id=f"other-{i}",
                  page_url=r["page_url"].replace("site.test", "site.test:8123"),
                  image_url=r["image_url"].replace("https://site.test", "http://site.test:9000"))
             for i, r in enumerate(rows)]
    random.Random(3).shuffle(moved)
    config = TrainConfig(epochs=2)
    first, second = train(rows, str(tmp_path / "a"), config), train(moved, str(tmp_path / "b"), config)
    assert first["held_out"] == second["held_out"] > 0
    assert first["threshold"] == second["threshold"]
    (a, _), (b, _) = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
