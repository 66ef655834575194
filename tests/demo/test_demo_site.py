"""The generated website: deterministic, noise planted as the ledger says, served from memory."""
import io
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import schemas
from demo import datasets, scenes
from demo.site import CATEGORIES, REUSED_CAPTION, SiteServer, build_site

N = 60  # good scenes: small, so the whole file runs in a few seconds


@pytest.fixture(scope="module")
def site():
    return build_site(seed=3, scenes=N)


def test_same_seed_same_bytes_other_seed_differs(site):
    made = []
    again = build_site(seed=3, scenes=N, progress=lambda: made.append(1))
    assert len(made) == sum(1 for r in again.resources.values() if r.content_type.startswith("image/"))
    assert again.ledger_json() == site.ledger_json()
    assert {p: r.body for p, r in again.resources.items()} == {p: r.body for p, r in site.resources.items()}
    other = build_site(seed=4, scenes=N)
    assert other.resources["/img/scene-00000.jpg"].body != site.resources["/img/scene-00000.jpg"].body


def test_scene_boxes_match_pixels():
    scene = scenes.make_scene(__import__("random").Random(1), "s", num_objects=1)
    (obj,) = scene.objects
    image = np.asarray(scenes.render(scene)).astype(int)
    colour = np.array(scenes.COLOURS[obj.colour])
    mask = np.abs(image - colour).sum(axis=2) < 60
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = obj.box
    # The coloured pixels lie inside the known box (blur spreads them by a pixel or two).
    assert xs.min() >= x1 - 2 and xs.max() <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() <= y2 + 2
    assert mask.sum() > 0.2 * (x2 - x1) * (y2 - y1)
    samples = scenes.detector_samples([scene])
    img, boxes, labels = samples[0]
    assert boxes.dtype == np.float32 and boxes.shape == (1, 4) and labels.dtype == np.int64
    assert labels[0] == scenes.CLASSES.index(obj.shape) and img.size == (scene.width, scene.height)


def test_captions_describe_the_scene():
    rng = __import__("random").Random(0)
    for scene in scenes.generate_scenes(0, 30):
        for text in scenes.captions(scene, rng, 5):
            for obj in scene.objects[:2]:
                assert obj.shape in text and obj.colour in text
    two = scenes.Scene("t", 200, 200, "plain", ((128,) * 3,) * 2, (
        scenes.SceneObject("triangle", "red", "small", (10, 80, 50, 120)),
        scenes.SceneObject("circle", "blue", "large", (100, 60, 190, 150))))
    assert "a small red triangle left of a large blue circle" in scenes.captions(two, None, 5)


def test_every_category_is_planted_and_ledgered(site):
    counts = site.counts()
    assert counts["clean"] == N
    for category in CATEGORIES:
        assert counts.get(category, 0) >= 3, category
    # Every ledger image is served, and every page's <img> is in the ledger.
    ledger_pairs = {(i["page"], i["image"]) for i in site.ledger}
    assert len(ledger_pairs) == len(site.ledger)  # (page, image) identifies a ledger item
    for page, image in ledger_pairs:
        assert image in site.resources
        body = site.resources[page].body.decode()
        assert f'src="{image}"' in body
    for path, res in site.resources.items():
        if res.content_type.startswith("text/html") and path not in ("/", "/index.html"):
            srcs = set(re.findall(r'src="([^"]+)"', res.body.decode()))
            assert srcs == {i["image"] for i in site.ledger if i["page"] == path}


def test_noise_has_its_planted_properties(site):
    res = site.resources
    by_cat = {c: [i for i in site.ledger if i["category"] == c] for c in CATEGORIES + ("clean",)}

    def size(path):
        return Image.open(io.BytesIO(res[path].body)).size

    for item in by_cat["clean"]:
        w, h = size(item["image"])
        assert 160 <= min(w, h) and max(w, h) <= 256 and max(w, h) / min(w, h) <= 1.5
        assert item["page_lang"] == "en" and item["caption"]
    assert all(max(size(i["image"])) <= 48 for i in by_cat["tiny_icon"])
    assert all(max(size(i["image"])) / min(size(i["image"])) > 4 for i in by_cat["banner"])
    for item in by_cat["corrupt"]:
        with pytest.raises(Exception):
            Image.open(io.BytesIO(res[item["image"]].body)).load()
    assert all(i["text_source"] is None and f'src="{i["image"]}" alt=""' in res[i["page"]].body.decode()
               for i in by_cat["decorative"])
    assert {i["page_lang"] for i in by_cat["non_english"]} == {"fr", "de", "es"}
    assert all(f'lang="{i["page_lang"]}"' in res[i["page"]].body.decode() for i in by_cat["non_english"])
    assert len({i["image"] for i in by_cat["reused_image"]}) == 1
    assert len({i["page"] for i in by_cat["reused_image"]}) == len(by_cat["reused_image"]) > 10
    assert {i["caption"] for i in by_cat["reused_caption"]} == {REUSED_CAPTION}
    assert len({i["image"] for i in by_cat["reused_caption"]}) > 10  # above the filter's default limit
    assert all(i["page"].startswith("/private/") for i in by_cat["robots_disallowed"])
    # A mismatched caption is another scene's caption and names none of this scene's (shape, colour).
    for item in by_cat["mismatch"]:
        scene = site.scenes[item["scene_id"]]
        assert not any(f"{o.colour} {o.shape}" in item["caption"] for o in scene.objects)
    kinds = {i["detail"] for i in by_cat["opt_out"]}
    assert kinds == {"image_header_noai", "page_header_noai", "meta_noimageai"}


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_server_serves_pages_images_robots_and_headers(site):
    with SiteServer(site) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, headers, body = _get(server.url + "robots.txt")
        assert status == 200 and b"Disallow: /private/" in body
        status, headers, body = _get(server.url)
        assert status == 200 and b'<html lang="en">' in body
        # The index links every page, so a crawler reaches the whole site from the root.
        assert {i["page"] for i in site.ledger} <= set(re.findall(r'href="([^"]+)"', body.decode()))
        clean = next(i for i in site.ledger if i["category"] == "clean")
        status, headers, body = _get(server.url + clean["image"].lstrip("/"))
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body == site.resources[clean["image"]].body
        img_opt = next(i for i in site.ledger if i["detail"] == "image_header_noai")
        assert _get(server.url + img_opt["image"].lstrip("/"))[1]["X-Robots-Tag"] == "noai"
        page_opt = next(i for i in site.ledger if i["detail"] == "page_header_noai")
        assert _get(server.url + page_opt["page"].lstrip("/"))[1]["X-Robots-Tag"] == "noai"
        meta_opt = next(i for i in site.ledger if i["detail"] == "meta_noimageai")
        assert b'<meta name="robots" content="noimageai">' in _get(server.url + meta_opt["page"].lstrip("/"))[2]
        assert _get(server.url + "no/such/page.html")[0] == 404
        request = urllib.request.Request(server.url + "index.html", method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and response.read() == b""
        assert "/robots.txt" in server.requests and "/no/such/page.html" in server.requests


def test_heldout_split_is_separate_and_has_several_captions(tmp_path, site):
    counts = datasets.write_test_split(seed=3, n=12, out_dir=str(tmp_path / "test"))
    pairs = schemas.read_table(str(tmp_path / "test" / "pairs"), "pairs")
    caps = schemas.read_table(str(tmp_path / "test" / "captions"), "captions")
    assert counts == {"images": 12, "captions": caps.num_rows} and pairs.num_rows == 12
    per_image = caps.group_by("image_id").aggregate([("caption", "count")])
    assert min(per_image.column("caption_count").to_pylist()) >= 3
    assert set(caps.column("split").to_pylist()) == {"test"}
    site_ids = {scenes.image_id(r.body) for r in site.resources.values() if r.content_type == "image/jpeg"}
    assert not site_ids & set(pairs.column("image_id").to_pylist())


def test_scenes_are_not_perceptual_near_duplicates():
    # The filter drops near-duplicate images by perceptual hash; distinct scenes must not collide.
    import imagehash

    hashes = [imagehash.phash(scenes.render(s)) for s in scenes.generate_scenes(0, 120)]
    closest = min(a - b for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert closest > 4


def test_a_site_needs_good_scenes():
    with pytest.raises(ValueError, match="at least one good scene"):
        build_site(seed=0, scenes=0)
