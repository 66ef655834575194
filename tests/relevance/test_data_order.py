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


def _ported(rows, port):
    """The same pairs crawled from another port: the URLs, and so the pair ids, change; the content does not."""
    moved = []
    for r in rows:
        page, image = (u.replace("site.test", f"site.test:{port}") for u in (r["page_url"], r["image_url"]))
        moved.append(dict(r, page_url=page, image_url=image, pair_id=f"{port}-{page}|{image}",
                          candidate_id=f"{port}-{page}|{image}"))
    return moved


def test_limit_chooses_pairs_by_content_not_by_pair_id_or_order(tmp_path):
    """--max-pairs takes the same pairs whatever the port (pair ids hash it) and the order of the rows."""
    import random

    from filters.relevance.data import choose_pairs, content_key
    from tests.relevance.conftest import write_pairs
    from tests.relevance.scenes import make_pairs

    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(10, seed=1)]
    a, b = _ported(rows, 8000), _ported(rows, 8001)
    random.Random(4).shuffle(b)
    write_pairs(a, str(tmp_path / "a"))
    write_pairs(b, str(tmp_path / "b"))
    from_a, from_b = read_pairs(str(tmp_path / "a"), limit=30), read_pairs(str(tmp_path / "b"), limit=30)
    assert len(from_a) == len(from_b) == 30
    chosen = sorted(map(content_key, from_a))
    assert sorted(map(content_key, from_b)) == chosen
    # the same choice from rows in memory (train() given a list), in any order
    assert sorted(map(content_key, choose_pairs(list(reversed(b)), 30))) == chosen
    assert sorted(map(content_key, choose_pairs(a, 30))) == chosen
    assert len(read_pairs(str(tmp_path / "a"), limit=100)) == 40 == len(choose_pairs(a, 100))


def test_training_ignores_pair_ids_row_order_and_port(tmp_path):
    """The same pairs crawled from another port, in another order, train the same model and threshold (and
    max_pairs chooses the same pairs)."""
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
    # of 100 pairs, the 85 must be the same 85 (and 30% of pages held out, so that more than 20 pairs are)
    config = TrainConfig(epochs=2, max_pairs=85, val_fraction=0.3, members=1)  # (one member: the order is its)
    first, second = train(rows, str(tmp_path / "a"), config), train(moved, str(tmp_path / "b"), config)
    assert first["held_out"] == second["held_out"] > 0
    assert first["threshold"] == second["threshold"]
    (a, _), (b, _) = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
