"""A saved model's config is refused at load when a count or a bound is too large to build or to use, and
--max-pairs breaks ties between pairs of equal content without the port (that pair ids hash)."""
import hashlib

import pytest

from filters.relevance.data import choose_pairs, content_key, read_pairs
from model.relevance import read_config
from tests.relevance.conftest import edited_model, write_pairs
from tests.relevance.scenes import make_pairs


@pytest.mark.parametrize("edit,message", [
    ({"members": 10**9}, "'members' must be a whole number of 1 or more and at most 1024, got 1000000000"),
    ({"members": 1025}, "'members' must be a whole number of 1 or more and at most 1024, got 1025"),
    ({"model": {"feature_clip": 10**400}}, "model.feature_clip must be a whole number of 0 or more and at most "
                                           "1000000, got 1000000000000"),
    ({"model": {"feature_clip": 10**6 + 1}}, "model.feature_clip must be a whole number of 0 or more and at most "
                                             "1000000, got 1000001"),
])
def test_a_count_or_bound_too_large_is_a_config_error_naming_the_file(tmp_path, edit, message):
    """10**9 members ran out of memory building the ensemble, and a clip of 10**400 was an OverflowError at the
    first score: both passed the config checks."""
    folder, path = edited_model(tmp_path, edit)
    with pytest.raises(ValueError) as caught:
        read_config(folder)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text and len(text) < 300


def test_the_largest_allowed_count_and_bound_load(tmp_path):
    folder, _ = edited_model(tmp_path, {"members": 1024, "model": {"feature_clip": 10**6}})
    assert read_config(folder)["members"] == 1024


def _served(rows, port):
    """Every pair served by https and by http from ``port``, with pair ids hashing the whole URLs (as LAIT's)."""
    served = []
    for row in rows:
        for scheme in ("https", "http"):
            page, image = (u.replace("https://site.test", f"{scheme}://site.test:{port}")
                           for u in (row["page_url"], row["image_url"]))
            pair_id = hashlib.sha256(f"{page}|{image}".encode()).hexdigest()
            served.append(dict(row, page_url=page, image_url=image, pair_id=pair_id, candidate_id=pair_id))
    return served


def _held(rows, port):
    """What the chosen pairs hold and where they were found, the port left out (scheme kept)."""
    return sorted((*content_key(r), r["page_url"].replace(f":{port}", ""), r["image_url"].replace(f":{port}", ""))
                  for r in rows)


def test_max_pairs_cutting_between_pairs_of_equal_content_keeps_the_same_pairs_whatever_the_port(tmp_path):
    """The http and https rows of a pair have one content key; their tie was broken by pair id, which hashes the
    port, so --max-pairs cutting between them kept the http row from one port and the https row from another."""
    rows = [{k: v for k, v in r.items() if k != "is_match"} for r in make_pairs(2, seed=7)]
    a, b = _served(rows, 8000), _served(rows, 8001)
    assert len(a) == 16
    for limit in range(1, 16, 2):  # each odd limit cuts between the two rows of one content key
        assert _held(choose_pairs(a, limit), 8000) == _held(choose_pairs(list(reversed(b)), limit), 8001), limit
    write_pairs(a, str(tmp_path / "a"))
    write_pairs(b, str(tmp_path / "b"))
    for limit in (5, 11):  # streamed from the dataset: the same choice
        from_a, from_b = read_pairs(str(tmp_path / "a"), limit=limit), read_pairs(str(tmp_path / "b"), limit=limit)
        assert _held(from_a, 8000) == _held(from_b, 8001) == _held(choose_pairs(a, limit), 8000)


def test_training_refuses_more_members_than_a_model_may_load(tmp_path):
    """A 1,025-member ensemble was trained and saved, then refused as it loaded (``MAX_MEMBERS``)."""
    from filters.relevance.config import TrainConfig
    from filters.relevance.train import train
    from model.relevance import MAX_MEMBERS
    from tests.relevance.scenes import make_pairs

    with pytest.raises(ValueError, match=f"members must be at most {MAX_MEMBERS}, got {MAX_MEMBERS + 1}"):
        train(make_pairs(2, seed=3), str(tmp_path / "m"), TrainConfig(members=MAX_MEMBERS + 1))
    assert not (tmp_path / "m").exists()
