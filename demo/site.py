"""The demo's generated website: scene images with true captions plus the web's noise, planted.

``build_site(seed, scenes)`` returns a ``Site``: every resource (pages, images, robots.txt) in
memory with its headers, and a ledger naming, for every ``<img>`` on every page, which planted
category it belongs to (``clean`` or one of ``CATEGORIES``). ``SiteServer`` serves it from memory on
127.0.0.1 with a threaded ``http.server`` on a free port. Same seed, same bytes.
"""
from __future__ import annotations

import html
import json
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from demo import foreign
from demo.scenes import (
    CLASSES,
    COLOURS,
    Scene,
    SceneObject,
    article,
    captions,
    encode,
    generate_scenes,
    make_scene,
    render,
)

log = logging.getLogger(__name__)

#: Planted noise categories, in the order the report lists them.
CATEGORIES = (
    "non_english",
    "boilerplate",
    "decorative",
    "tiny_icon",
    "banner",
    "reused_image",
    "reused_caption",
    "mismatch",
    "corrupt",
    "robots_disallowed",
    "opt_out",
)

#: Share of the number of good scenes planted per category (minimum 3 each).
DEFAULT_RATES = {
    "non_english": 0.06,
    "boilerplate": 0.06,
    "decorative": 0.03,
    "tiny_icon": 0.03,
    "banner": 0.02,
    "mismatch": 0.06,
    "corrupt": 0.02,
    "robots_disallowed": 0.02,
    "opt_out": 0.03,
}
#: How many pages carry the one reused image, and how many images carry the one reused caption,
#: as a share of the good scenes (at least REUSE_MIN each, so that a "shared by more than N" rule fires).
REUSE_RATE = 0.016
#: At least this many: above the filter's default limit of 10 images per caption.
REUSE_MIN = 12
REUSED_CAPTION = "geometric shapes in bright colours for your next design project"

BOILERPLATE_TEXTS = (
    "IMG_{n:04d}.JPG", "DSC{n:05d}.jpg", "photo_{n}.png", "click here", "logo", "image", "thumbnail",
    "click here to enlarge", "untitled", "read more", "banner_{n}.gif", "download now",
)

ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
IMAGES_PER_PAGE = 6


@dataclass
class Resource:
    """One served resource: body, content type and extra response headers."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Site:
    """A generated site: resources by path, the planted-noise ledger and the scenes behind it."""

    seed: int
    resources: dict[str, Resource]
    ledger: list[dict]
    scenes: dict[str, Scene]

    def ledger_json(self) -> str:
        """The ledger as JSON (stable key order), as the demo writes it."""
        return json.dumps({"seed": self.seed, "categories": list(CATEGORIES), "items": self.ledger},
                          indent=1, sort_keys=True)

    def counts(self) -> dict[str, int]:
        """Ledger items per category (``clean`` included)."""
        out: dict[str, int] = {}
        for item in self.ledger:
            out[item["category"]] = out.get(item["category"], 0) + 1
        return out


@dataclass
class _Img:
    """An ``<img>`` waiting for a page: its path, text attributes and ledger record."""

    src: str
    category: str
    caption: str | None
    text_source: str | None  # alt | title | None (decorative: alt="")
    scene_id: str | None = None
    detail: str | None = None
    size: tuple[int, int] | None = None


def _count(n_good: int, rate: float) -> int:
    return max(3, int(round(n_good * rate)))


def _icon(obj_shape: str, colour: str, side: int) -> Image.Image:
    """A tiny icon: one shape filling a small square."""
    scene = Scene("icon", side, side, "plain", ((235, 235, 235), (235, 235, 235)),
                  (SceneObject(obj_shape, colour, "large", (1, 1, side - 2, side - 2)),))
    return render(scene)


def _banner(rng: random.Random, scene_id: str) -> tuple[Scene, Image.Image]:
    """A wide banner (aspect about 4.5) with two shapes, so its caption is still true."""
    width, height = rng.choice(((720, 160), (800, 176), (640, 144)))
    objects = []
    for i, x in enumerate((height // 2, width - 3 * height // 2)):
        side = int(height * 0.7)
        y1 = (height - side) // 2
        objects.append(SceneObject(rng.choice(CLASSES), rng.choice(list(COLOURS)), "large",
                                   (x + i, y1, x + i + side, y1 + side)))
    scene = Scene(scene_id, width, height, "gradient", ((150, 160, 170), (190, 180, 170)), tuple(objects))
    return scene, render(scene)


def _corrupt_bytes(rng: random.Random, valid: bytes, kind: int) -> bytes:
    """Bytes that are served as an image but do not decode."""
    if kind == 0:  # a JPEG cut after its header
        return valid[: min(200, len(valid) // 4)]
    if kind == 1:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(2048))
    return b"<html><body>404 image not found</body></html>"  # an error page served as image/jpeg


def _page_html(title: str, lang: str, images: list[_Img], links: list[tuple[str, str]],
               meta_robots: str | None = None) -> bytes:
    parts = [f'<!doctype html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n']
    if meta_robots:
        parts.append(f'<meta name="robots" content="{meta_robots}">\n')
    parts.append(f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<p>{html.escape(foreign.PAGE_TEXT[lang])}</p>\n")
    for img in images:
        attrs = [f'src="{img.src}"']
        if img.text_source == "alt":
            attrs.append(f'alt="{html.escape(img.caption or "", quote=True)}"')
        elif img.text_source == "title":
            attrs.append(f'title="{html.escape(img.caption or "", quote=True)}"')
        else:
            attrs.append('alt=""')
        if img.size:
            attrs.append(f'width="{img.size[0]}" height="{img.size[1]}"')
        parts.append(f"<figure><img {' '.join(attrs)}></figure>\n")
    parts.append("<nav>\n")
    for href, text in links:
        parts.append(f'<a href="{href}">{html.escape(text)}</a>\n')
    parts.append("</nav>\n</body>\n</html>\n")
    return "".join(parts).encode("utf-8")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def build_site(seed: int = 0, scenes: int = 1500, images_per_page: int = IMAGES_PER_PAGE,
               rates: dict[str, float] | None = None, progress: Callable[[], None] | None = None) -> Site:
    """Generate the whole site for ``seed`` with ``scenes`` good (clean) scene images.

    ``progress``, when given, is called once per image made (for a progress bar).
    """
    if scenes < 1:
        raise ValueError(f"the site needs at least one good scene (got {scenes})")
    rates = {**DEFAULT_RATES, **(rates or {})}
    rng = random.Random(f"site:{seed}")
    resources: dict[str, Resource] = {}
    all_scenes: dict[str, Scene] = {}

    def put_image(path: str, body: bytes, content_type: str = "image/jpeg",
                  headers: dict[str, str] | None = None) -> None:
        resources[path] = Resource(body, content_type, headers or {})
        if progress:
            progress()

    def add_scene_image(scene: Scene, path: str, headers: dict[str, str] | None = None) -> None:
        put_image(path, encode(render(scene)), headers=headers)
        all_scenes[scene.scene_id] = scene

    def text_source() -> str:
        return "title" if rng.random() < 0.15 else "alt"

    english: list[_Img] = []
    for scene in generate_scenes(seed, scenes, "scene"):
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        english.append(_Img(path, "clean", captions(scene, rng, 1)[0], text_source(), scene.scene_id))

    def fresh(prefix: str, n: int) -> list[Scene]:
        return generate_scenes(seed, n, prefix)

    for i, scene in enumerate(fresh("boiler", _count(scenes, rates["boilerplate"]))):
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        text = BOILERPLATE_TEXTS[i % len(BOILERPLATE_TEXTS)].format(n=rng.randrange(10, 99999))
        english.append(_Img(path, "boilerplate", text, "alt", scene.scene_id))

    good_list = list(all_scenes.values())
    for scene in fresh("mismatch", _count(scenes, rates["mismatch"])):
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        kinds = {(o.shape, o.colour) for o in scene.objects}
        for _attempt in range(1000):  # a caption of another image that shares no (shape, colour) with this one
            other = rng.choice(good_list)
            if not kinds & {(o.shape, o.colour) for o in other.objects}:
                break
        english.append(_Img(path, "mismatch", captions(other, rng, 1)[0], "alt", scene.scene_id,
                            detail=f"caption of {other.scene_id}"))

    for scene in fresh("decor", _count(scenes, rates["decorative"])):
        # Ornaments: a background with no object, marked decorative with alt="".
        plain = Scene(scene.scene_id, scene.width, scene.height, scene.background, scene.bg_colours, ())
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(plain, path)
        english.append(_Img(path, "decorative", None, None, scene.scene_id))

    for i in range(_count(scenes, rates["tiny_icon"])):
        shape, colour = rng.choice(CLASSES), rng.choice(list(COLOURS))
        side = rng.choice((16, 24, 32, 48))
        path = f"/img/icons/icon-{i:04d}.png"
        put_image(path, encode(_icon(shape, colour, side), "PNG"), "image/png")
        english.append(_Img(path, "tiny_icon", article(f"{colour} {shape} icon"), "alt", size=(side, side)))

    for i in range(_count(scenes, rates["banner"])):
        scene, image = _banner(rng, f"banner-{i:05d}")
        path = f"/img/banners/{scene.scene_id}.jpg"
        put_image(path, encode(image))
        all_scenes[scene.scene_id] = scene
        a, b = scene.objects
        english.append(_Img(path, "banner", f"a wide banner with {article(a.colour + ' ' + a.shape)} and {article(b.colour + ' ' + b.shape)}",
                            "alt", scene.scene_id))

    for i, scene in enumerate(fresh("corrupt", _count(scenes, rates["corrupt"]))):
        path = f"/img/{scene.scene_id}.jpg"
        put_image(path, _corrupt_bytes(rng, encode(render(scene)), i % 3))
        english.append(_Img(path, "corrupt", captions(scene, rng, 1)[0], "alt", scene.scene_id,
                            detail=("truncated", "random_bytes", "html_body")[i % 3]))

    reuse = max(REUSE_MIN, int(round(scenes * REUSE_RATE)))
    for scene in fresh("shared-caption", reuse):
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        english.append(_Img(path, "reused_caption", REUSED_CAPTION, "alt", scene.scene_id))

    opt_out_scenes = fresh("optout", _count(scenes, rates["opt_out"]))
    # A third of the opt-outs are images served with X-Robots-Tag: noai on ordinary pages.
    image_opt_outs = opt_out_scenes[: len(opt_out_scenes) // 3]
    for scene in image_opt_outs:
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path, {"X-Robots-Tag": "noai"})
        english.append(_Img(path, "opt_out", captions(scene, rng, 1)[0], "alt", scene.scene_id,
                            detail="image_header_noai"))

    rng.shuffle(english)
    pages: list[tuple[str, str, list[_Img], dict[str, str], str | None]] = []  # path, lang, imgs, headers, meta
    for i, chunk in enumerate(_chunks(english, images_per_page)):
        pages.append((f"/gallery/page-{i + 1:04d}.html", "en", chunk, {}, None))

    # One image reused on many pages, each time with a different true caption where possible.
    reused = make_scene(random.Random(f"reused:{seed}"), "reused-00000", num_objects=2)
    add_scene_image(reused, "/img/shared/reused.jpg")
    variants = captions(reused, None, 8)
    for n, page_index in enumerate(rng.sample(range(len(pages)), min(reuse, len(pages)))):
        pages[page_index][2].append(_Img("/img/shared/reused.jpg", "reused_image", variants[n % len(variants)],
                                         "alt", reused.scene_id))

    foreign_items: dict[str, list[_Img]] = {lang: [] for lang in foreign.LANGUAGES}
    for i, scene in enumerate(fresh("foreign", _count(scenes, rates["non_english"]))):
        lang = foreign.LANGUAGES[i % len(foreign.LANGUAGES)]
        path = f"/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        foreign_items[lang].append(_Img(path, "non_english", foreign.foreign_caption(scene, lang, rng), "alt",
                                        scene.scene_id, detail=lang))
    for lang, items in foreign_items.items():
        for i, chunk in enumerate(_chunks(items, images_per_page)):
            pages.append((f"/{lang}/page-{i + 1:04d}.html", lang, chunk, {}, None))

    private = []
    for scene in fresh("private", _count(scenes, rates["robots_disallowed"])):
        path = f"/private/img/{scene.scene_id}.jpg"
        add_scene_image(scene, path)
        private.append(_Img(path, "robots_disallowed", captions(scene, rng, 1)[0], "alt", scene.scene_id))
    for i, chunk in enumerate(_chunks(private, images_per_page)):
        pages.append((f"/private/page-{i + 1:04d}.html", "en", chunk, {}, None))

    page_opt_outs = opt_out_scenes[len(opt_out_scenes) // 3:]
    # At least two pages, so that both page-level kinds (header and <meta>) are planted.
    for i, chunk in enumerate(_chunks(page_opt_outs, max(1, min(3, len(page_opt_outs) // 2)))):
        header_kind = i % 2 == 0  # alternate: X-Robots-Tag header on the page, or <meta name=robots>
        imgs = []
        for scene in chunk:
            path = f"/img/{scene.scene_id}.jpg"
            add_scene_image(scene, path)
            imgs.append(_Img(path, "opt_out", captions(scene, rng, 1)[0], "alt", scene.scene_id,
                             detail="page_header_noai" if header_kind else "meta_noimageai"))
        pages.append((f"/optout/page-{i + 1:04d}.html", "en", imgs,
                      {"X-Robots-Tag": "noai"} if header_kind else {}, None if header_kind else "noimageai"))

    ledger: list[dict] = []
    page_paths = [p[0] for p in pages]
    for index, (path, lang, imgs, headers, meta) in enumerate(pages):
        links = [("/index.html", "home")]
        if index + 1 < len(pages):
            links.append((page_paths[index + 1], "next"))
        if index > 0:
            links.append((page_paths[index - 1], "previous"))
        links.append((page_paths[rng.randrange(len(pages))], "see also"))
        body = _page_html(f"Shapes gallery {index + 1}", lang, imgs, links, meta)
        resources[path] = Resource(body, "text/html; charset=utf-8", dict(headers))
        for img in imgs:
            ledger.append({"page": path, "image": img.src, "caption": img.caption, "category": img.category,
                           "text_source": img.text_source, "scene_id": img.scene_id, "detail": img.detail,
                           "page_lang": lang})

    index_links = [(p, f"page {i + 1}") for i, p in enumerate(page_paths)]
    resources["/index.html"] = Resource(_page_html("Shapes gallery", "en", [], index_links), "text/html; charset=utf-8")
    resources["/"] = resources["/index.html"]
    resources["/robots.txt"] = Resource(ROBOTS_TXT.encode(), "text/plain; charset=utf-8")
    log.info("site seed %d: %d resources, %d pages, %d ledger items", seed, len(resources), len(pages), len(ledger))
    return Site(seed, resources, ledger, all_scenes)


class SiteServer:
    """Serves a ``Site`` from memory on 127.0.0.1 (port 0 = a free port) in a background thread.

    Use as a context manager; ``url`` is the root URL and ``requests`` lists the paths served.
    """

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 0):
        self.site = site
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Keep-alive with headers and body in separate small writes meets Nagle's algorithm and
            # delayed ACKs (about 40 ms a response); buffer each response and send it at once.
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def _respond(self, with_body: bool) -> None:
                path = self.path.split("?", 1)[0].split("#", 1)[0]
                with server._lock:
                    server.requests.append(path)
                resource = server.site.resources.get(path)
                if resource is None:
                    body, status, ctype, headers = b"not found\n", 404, "text/plain", {}
                else:
                    body, status, ctype, headers = resource.body, 200, resource.content_type, resource.headers
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._respond(True)

            def do_HEAD(self):  # noqa: N802
                self._respond(False)

            def log_message(self, fmt, *args):  # route access logs to logging, not stderr
                log.debug("site: " + fmt, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:PORT/``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "SiteServer":
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="demo-site", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SiteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
