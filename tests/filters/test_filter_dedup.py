"""Dedup and aggregation: one test per reason, the banding guarantee, and the ranking rule."""
import random

import pytest

from filters.dedup import (caption_key, deduplicate, near_duplicates, near_duplicates_plain, phash_bands, rank_key,
                           split_best_text, split_shared_caption)


def _pair(pid, image, caption="a dog on the beach", phash="0000000000000000", relevance=None, quality=0.5):
    return {"pair_id": pid, "candidate_id": f"c-{pid}", "image_id": image, "caption": caption, "phash": phash,
            "relevance": relevance, "text_quality": quality}


def test_caption_key_ignores_case_punctuation_spacing():
    assert caption_key("A Dog,  on the beach!") == caption_key("a dog on the beach")


def test_caption_shared_by_many_images():
    pairs = [_pair(f"p{i}", f"img{i}", "Product image") for i in range(4)]
    kept, rejected = split_shared_caption(pairs, max_images=3)
    assert kept == [] and {r["reason"] for r in rejected} == {"caption_shared_by_many_images"}
    assert {r["pair_id"] for r in rejected} == {"p0", "p1", "p2", "p3"}
    kept, rejected = split_shared_caption(pairs[:3], max_images=3)
    assert len(kept) == 3 and rejected == []
    # the same image twice counts once
    assert split_shared_caption([_pair("a", "x"), _pair("b", "x")], max_images=1)[1] == []


def test_image_has_better_text_by_quality_then_relevance():
    by_quality = [_pair("a", "img", "short", quality=0.2), _pair("b", "img", "a long good caption", quality=0.9)]
    kept, rejected = split_best_text(by_quality)
    assert [p["pair_id"] for p in kept] == ["b"]
    assert rejected[0]["reason"] == "image_has_better_text" and rejected[0]["pair_id"] == "a"
    # relevance, when scored, outranks text quality
    scored = [_pair("a", "img", quality=0.2, relevance=0.9), _pair("b", "img", quality=0.9, relevance=0.1)]
    assert split_best_text(scored)[0][0]["pair_id"] == "a"
    assert rank_key(scored[0]) < rank_key(scored[1])


def test_equal_texts_tie_break_on_content_and_place_not_on_the_port_hashed_pair_id():
    """One image on two pages, equal quality: the same page's text wins whichever port the site was crawled on."""
    def crawl(port, ids):
        return [dict(_pair(ids[0], "img", "a cat on a mat"), page_url=f"http://127.0.0.1:{port}/page-2.html"),
                dict(_pair(ids[1], "img", "a mat under a cat"), page_url=f"http://127.0.0.1:{port}/page-1.html"),
                dict(_pair(ids[2], "img", "a cat on a mat"), page_url=f"http://127.0.0.1:{port}/page-1.html")]

    for port, ids in ((8001, ("z", "y", "x")), (9002, ("a", "b", "c"))):
        kept, _ = split_best_text(crawl(port, ids))
        assert (kept[0]["caption"], kept[0]["page_url"]) == ("a cat on a mat", f"http://127.0.0.1:{port}/page-1.html")


def test_near_duplicate_image():
    base = 0x0F0F0F0F0F0F0F0F
    near = f"{base ^ 0b1011:016x}"  # 3 bits away
    far = f"{base ^ 0xFF00FF:016x}"  # 16 bits away
    pairs = [_pair("best", "i1", phash=f"{base:016x}", quality=0.9), _pair("near", "i2", phash=near, quality=0.5),
             _pair("far", "i3", phash=far, quality=0.1)]
    kept, rejected = deduplicate(pairs, max_images_per_caption=None, phash_distance=4)
    assert sorted(p["pair_id"] for p in kept) == ["best", "far"]
    assert [(r["pair_id"], r["reason"]) for r in rejected] == [("near", "near_duplicate_image")]
    assert "best" in rejected[0]["detail"]
    kept, rejected = deduplicate(pairs, max_images_per_caption=None, phash_distance=-1)
    assert len(kept) == 3 and rejected == []


def test_bands_find_every_pair_within_distance():
    rng = random.Random(0)
    for distance in (0, 2, 4, 8):
        for _ in range(200):
            a = rng.getrandbits(64)
            flips = rng.sample(range(64), rng.randint(0, distance))
            b = a
            for bit in flips:
                b ^= 1 << bit
            ka, kb = set(phash_bands(f"{a:016x}", distance)), set(phash_bands(f"{b:016x}", distance))
            assert ka & kb, (distance, flips)
    assert len(phash_bands("ffffffffffffffff", 4)) == 5


def test_near_duplicates_is_order_independent():
    items = [("a", "0000000000000000", (0,)), ("b", "0000000000000001", (1,)), ("c", "00000000000000ff", (2,))]
    assert near_duplicates(items, 2) == near_duplicates(list(reversed(items)), 2) == [("b", "a")]


def test_deduplicate_runs_all_steps_and_loses_nothing():
    pairs = ([_pair(f"s{i}", f"shared{i}", "Buy now product", phash=f"{i * 7919:016x}") for i in range(5)]
             + [_pair("x1", "same", "first caption here", phash="1111111111111111", quality=0.3),
                _pair("x2", "same", "second caption here", phash="1111111111111111", quality=0.8)]
             + [_pair("u", "unique", "unique caption", phash="abcdefabcdefabcd")])
    kept, rejected = deduplicate(pairs, max_images_per_caption=2, phash_distance=4)
    assert len(kept) + len(rejected) == len(pairs)
    assert sorted(p["pair_id"] for p in kept) == ["u", "x2"]
    assert sorted(r["reason"] for r in rejected).count("caption_shared_by_many_images") == 5


def test_caption_key_keeps_vowel_signs():
    """Hindi captions that differ in a vowel sign (a combining mark) are different captions, not one."""
    captions = [word + " की तस्वीर यहाँ है" for word in
                ("काम", "कीम", "कोम", "कूम", "केम", "कैम", "कौम", "किम", "कुम", "कृम", "कॉम")]
    assert len({caption_key(c) for c in captions}) == 11
    assert caption_key("काम, की तस्वीर!") == caption_key("काम की  तस्वीर")  # punctuation still ignored
    assert caption_key("Café_au-lait") == "café au lait" and caption_key("Cafe au lait") != caption_key("Café au lait")
    kept, rejected = deduplicate([_pair(str(i), f"img{i}", c) for i, c in enumerate(captions)], 10, -1)
    assert len(kept) == 11 and rejected == []


@pytest.mark.parametrize("cells, numpy1", [(1, False), (7, False), (1 << 22, False), (7, True)])
def test_near_duplicates_matches_the_plain_definition(monkeypatch, cells, numpy1):
    """One row per block, ragged blocks, one block; and numpy 1.26 (no ``bitwise_count``), which setup.py allows."""
    import filters.dedup as dedup
    monkeypatch.setattr(dedup, "_COMPARE_CELLS", cells)
    if numpy1:
        monkeypatch.delattr(dedup.numpy, "bitwise_count")
    rng = random.Random(cells)
    base = [rng.getrandbits(64) for _ in range(6)]
    items = []
    for i in range(120):  # clusters around a few hashes, high bits set too (uint64 above 2**63)
        value = base[i % 6] | (1 << 63) if i % 2 else base[i % 6]
        for bit in rng.sample(range(64), rng.randint(0, 6)):
            value ^= 1 << bit
        items.append((f"p{i:03d}", f"{value:016x}", (rng.randint(0, 5), f"p{i:03d}")))
    items.append(items[3])  # a pair read twice is compared once
    for distance in (0, 3, 6, 16):
        assert near_duplicates(items, distance) == near_duplicates_plain(items, distance)
    assert near_duplicates(items[:1], 4) == [] and near_duplicates([], 4) == []
