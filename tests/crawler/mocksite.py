"""A mock website for the crawl tests, served on 127.0.0.1 at a free port: one page per case.

Scenarios come from the path: static pages and images from a dict, plus ``/status?n=404``,
``/delay?s=2``, ``/redirect?to=...`` and a redirect loop. A path whose entry is a list answers with its
responses in turn, the last one repeating (a robots.txt that fails, then recovers). Every request is
logged so tests can count fetches per path, and the body bytes sent are counted per path (``sent``).
With ``one_write`` a small response goes out in one write, headers and body together, as many servers send it
(the client then reads them in one go).
"""
from __future__ import annotations

import collections
import gzip
import http.server
import io
import struct
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def jpeg(width: int, height: int, color=(200, 30, 30), exif_orientation: int | None = None) -> bytes:
    """A photo-like JPEG (a gradient, so it compresses like a photo would not, but decodes the same)."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 7):
        image.putpixel((x, (x * 3) % height), (x % 255, 120, 200))
    buffer = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, "JPEG", quality=80, **kwargs)
    return buffer.getvalue()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge image (Pillow's decompression-bomb case)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class MockSite:
    """Serves ``pages`` ({path: (status, headers, body)} or {path: [responses in turn]}) and the scenario paths;
    logs every request."""

    #: Bodies go out in chunks of this size, so that ``sent`` stops growing soon after a client hangs up.
    CHUNK = 64 * 1024

    def __init__(self, pages: dict[str, tuple[int, dict, bytes] | list], slow_prefix: str | None = None,
                 slow_s: float = 0.0, one_write: bool = False):
        self.pages = pages
        self.one_write = one_write  # a body of at most CHUNK bytes goes out in the headers' write
        self.slow_prefix, self.slow_s = slow_prefix, slow_s  # paths under slow_prefix answer after slow_s
        self.log: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.sent: collections.Counter = collections.Counter()  # path -> body bytes the socket accepted
        self._lock = threading.Lock()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                with site._lock:
                    site.log.append(self.path)
                    site.counts[urlsplit(self.path).path] += 1
                status, headers, body = site.respond(self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                path = urlsplit(self.path).path
                if site.one_write and len(body) <= site.CHUNK:
                    self._headers_buffer.extend([b"\r\n", body])  # end_headers(), with the body in its write
                    try:
                        self.flush_headers()
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                        return
                    with site._lock:
                        site.sent[path] += len(body)
                    return
                self.end_headers()
                try:
                    for start in range(0, len(body), site.CHUNK):
                        chunk = body[start:start + site.CHUNK]
                        self.wfile.write(chunk)
                        with site._lock:
                            site.sent[path] += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops connections a concurrent crawler opens

            def handle_error(self, request, client_address):
                pass  # a client that hangs up on a capped download is part of the test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def respond(self, raw_path: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/status":
            code = int(query.get("n", 500))
            return code, {"Content-Type": "text/html"}, f"<html><body>status {code}</body></html>".encode()
        if parts.path == "/delay":
            time.sleep(float(query.get("s", 1)))
            return 200, {"Content-Type": "text/html"}, b"<html><body>slow</body></html>"
        if parts.path == "/redirect":
            return 302, {"Location": query.get("to", "/")}, b""
        if parts.path in self.pages:
            if self.slow_prefix and parts.path.startswith(self.slow_prefix):
                time.sleep(self.slow_s)
            answer = self.pages[parts.path]
            if isinstance(answer, list):  # responses in turn (do_GET counted this request already)
                with self._lock:
                    answer = answer[min(self.counts[parts.path], len(answer)) - 1]
            return answer
        return 404, {"Content-Type": "text/html"}, b"<html><body>not found</body></html>"

    def __enter__(self) -> "MockSite":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def html(body: str, head: str = "", lang: str | None = "en", charset: str = "utf-8", encoding: str = "utf-8") -> bytes:
    lang_attr = f' lang="{lang}"' if lang else ""
    return (f'<!DOCTYPE html><html{lang_attr}><head><meta charset="{charset}"><title>Case page</title>{head}</head>'
            f"<body>{body}</body></html>").encode(encoding)


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(b"<html><body>" + b" " * size + b"</body></html>", compresslevel=9)


HTML = {"Content-Type": "text/html; charset=utf-8"}
JPEG = {"Content-Type": "image/jpeg"}
GIF_PIXEL = "data:image/gif;base64,R0lGODlhAQABAAAAACw="

#: Page path -> its body, one page per case of the extraction contract.
CASE_PAGES = {
    "/basic.html": '<p>Basic page text.</p><img src="img/a.jpg" alt="A red square" title="Red">'
                   '<img src="/img/shared.jpg" alt="Shared on basic">',
    "/srcset.html": '<img src="img/s-small.jpg" srcset="img/s-small.jpg 320w, img/s-large.jpg 1024w, img/s-mid.jpg 640w"'
                    ' sizes="(max-width: 600px) 320px, 1024px" alt="Srcset">',
    "/lazy.html": f'<img src="{GIF_PIXEL}" data-src="img/lazy1.jpg" alt="Lazy one">'
                  '<img data-srcset="img/lazy2-small.jpg 1x, img/lazy2.jpg 2x" alt="Lazy two">'
                  '<img data-original="img/lazy3.jpg" alt="Lazy three">'
                  '<img data-lazy-src="img/lazy4.jpg" src="img/placeholder.gif" alt="Lazy four">',
    "/picture.html": '<picture><source type="image/webp" srcset="img/p-small.jpg 480w, img/p-large.jpg 1200w">'
                     '<img src="img/p-fallback.jpg" alt="Picture"></picture>',
    "/base.html": '<img src="b.jpg" alt="Based"><img src="//127.0.0.1:{port}/img/pr.jpg#frag" alt="Protocol relative">',
    "/data.html": '<img src="data:image/png;base64,iVBORw0KGgo=" alt="Inline">',
    "/decorative.html": '<img src="img/deco.jpg" alt=""><img src="img/notext.jpg">',
    "/entities.html": '<img src="img/ent.jpg" alt="  Fish &amp;\n\t chips &eacute;  " title=" &quot;Quoted&quot; ">',
    "/figure.html": '<figure><img src="img/fig.jpg" alt="Figure alt"><figcaption> A  caption <b>bold</b> </figcaption>'
                    '</figure><figure><img src="img/fig2.jpg"><figcaption>Only caption</figcaption></figure>',
    "/optout-meta.html": '<img src="img/opt-meta.jpg" alt="Opted out by meta">',
    "/optout-header.html": '<img src="img/opt-header.jpg" alt="Opted out by header">',
    "/optout-image.html": '<img src="img/opt-image.jpg" alt="Image opted out">',
    "/shared.html": '<img src="/img/shared.jpg" alt="Shared on second page">',
    "/bad-images.html": "".join(f'<img src="{src}" alt="{alt}">' for src, alt in [
        ("img/small.jpg", "Too small"), ("img/wide.jpg", "Too wide"), ("img/corrupt.jpg", "Corrupt"),
        ("img/bomb.png", "Bomb"), ("img/huge.jpg", "Huge"), ("img/missing.jpg", "Missing"),
        ("img/rotated.jpg", "Rotated"), ("img/format.bmp", "Bitmap"), ("/redirect?to=/img/a2.jpg", "Redirected image"),
    ]),
    "/redirected.html": '<img src="img/redir.jpg" alt="After redirect">',
}

#: (page path, image path) -> (alt, title, figcaption, page_lang, width, height) of every expected candidate.
EXPECTED = {
    ("/basic.html", "/img/a.jpg"): ("A red square", "Red", None, "en", 96, 72),
    ("/basic.html", "/img/shared.jpg"): ("Shared on basic", None, None, "en", 96, 72),
    ("/shared.html", "/img/shared.jpg"): ("Shared on second page", None, None, "en", 96, 72),
    ("/srcset.html", "/img/s-large.jpg"): ("Srcset", None, None, "en", 96, 72),
    ("/lazy.html", "/img/lazy1.jpg"): ("Lazy one", None, None, "en", 96, 72),
    ("/lazy.html", "/img/lazy2.jpg"): ("Lazy two", None, None, "en", 96, 72),
    ("/lazy.html", "/img/lazy3.jpg"): ("Lazy three", None, None, "en", 96, 72),
    ("/lazy.html", "/img/lazy4.jpg"): ("Lazy four", None, None, "en", 96, 72),
    ("/picture.html", "/img/p-large.jpg"): ("Picture", None, None, "en", 96, 72),
    ("/base.html", "/sub/b.jpg"): ("Based", None, None, "en", 96, 72),
    ("/base.html", "/img/pr.jpg"): ("Protocol relative", None, None, "en", 96, 72),
    ("/entities.html", "/img/ent.jpg"): ("Fish & chips é", '"Quoted"', None, "en", 96, 72),
    ("/figure.html", "/img/fig.jpg"): ("Figure alt", None, "A caption bold", "en", 96, 72),
    ("/figure.html", "/img/fig2.jpg"): (None, None, "Only caption", "en", 96, 72),
    ("/fr.html", "/img/fr.jpg"): ("Un carré rouge", None, None, "fr", 96, 72),
    ("/content-language.html", "/img/de.jpg"): ("Ein rotes Quadrat", None, None, "de", 96, 72),
    ("/broken.html", "/img/broken.jpg"): ("Broken markup", None, None, None, 96, 72),
    ("/latin1.html", "/img/latin1.jpg"): ("Café crème", None, None, "en", 96, 72),
    ("/wrongenc.html", "/img/wrongenc.jpg"): ("Crème brûlée", None, None, "en", 96, 72),
    ("/bad-images.html", "/img/rotated.jpg"): ("Rotated", None, None, "en", 72, 96),
    ("/bad-images.html", "/redirect?to=/img/a2.jpg"): ("Redirected image", None, None, "en", 96, 72),
    ("/redirected.html", "/img/redir.jpg"): ("After redirect", None, None, "en", 96, 72),
}

#: Rejected rows of the case site: (page path, image path or None) -> reason.
EXPECTED_REJECTS = {
    ("/data.html", None): "data_uri",
    ("/decorative.html", "/img/deco.jpg"): "decorative_image",
    ("/decorative.html", "/img/notext.jpg"): "no_text",
    ("/optout-meta.html", "/img/opt-meta.jpg"): "opt_out_noai",
    ("/optout-header.html", "/img/opt-header.jpg"): "opt_out_noimageindex",
    ("/optout-image.html", "/img/opt-image.jpg"): "opt_out_noimageai",
    ("/bad-images.html", "/img/small.jpg"): "image_too_small",
    ("/bad-images.html", "/img/wide.jpg"): "aspect_ratio_out_of_range",
    ("/bad-images.html", "/img/corrupt.jpg"): "image_decode_error",
    ("/bad-images.html", "/img/bomb.png"): "decompression_bomb",
    ("/bad-images.html", "/img/huge.jpg"): "too_large",
    ("/bad-images.html", "/img/missing.jpg"): "http_404",
    ("/bad-images.html", "/img/format.bmp"): "format_not_allowed",
    ("/private/secret.html", None): "robots_disallowed",
    ("/status?n=404", None): "http_404",
    ("/status?n=500", None): "http_500",
    ("/delay?s=3", None): "timeout",
    ("/loop", None): "too_many_redirects",
    ("/bomb-page.html", None): "too_large",
    ("/notes.txt", None): "not_html",
}

#: Settings the case crawl runs with (tests keep images small and the timeout short).
TEST_SETTINGS = {"AUTOTHROTTLE_ENABLED": False, "DOWNLOAD_TIMEOUT": 1, "RETRY_ENABLED": False,
                 "LAIT_IMAGE_MAXSIZE": 100_000, "LAIT_PAGE_MAXSIZE": 1_000_000}
TEST_MIN_SIDE = 64


def case_site() -> MockSite:
    """The mock website with one page per extraction, politeness and safety case."""
    site = MockSite({})
    port = site.port
    pages: dict[str, tuple[int, dict, bytes]] = {}
    links = list(CASE_PAGES) + ["/fr.html", "/content-language.html", "/broken.html", "/latin1.html",
                                "/wrongenc.html", "/private/secret.html", "/status?n=404", "/status?n=500",
                                "/delay?s=3", "/redirect?to=/redirected.html", "/loop", "/bomb-page.html",
                                "/notes.txt", "http://offsite.invalid/page.html"]
    index = "".join(f'<a href="{link}">{link}</a> ' for link in links if link != "/redirected.html")
    pages["/"] = (200, HTML, html(f"<p>Index of the LAIT mock site.</p>{index}"))
    for path, body in CASE_PAGES.items():
        head = ""
        headers = dict(HTML)
        if path == "/optout-meta.html":
            head = '<meta name="robots" content="index, follow, noai">'
        if path == "/base.html":
            head = '<base href="/sub/">'
        if path == "/optout-header.html":
            headers["X-Robots-Tag"] = "noimageindex, otherbot: noindex"  # unscoped first: ours
        pages[path] = (200, headers, html(body.replace("{port}", str(port)), head=head))
    pages["/fr.html"] = (200, HTML, html('<img src="img/fr.jpg" alt="Un carré rouge">', lang="fr"))
    pages["/content-language.html"] = (200, dict(HTML, **{"Content-Language": "de, en"}),
                                       html('<img src="img/de.jpg" alt="Ein rotes Quadrat">', lang=None))
    pages["/broken.html"] = (200, HTML, b'<div><p>Broken <img src=img/broken.jpg alt="Broken markup" <p>open <table><tr><td>cell')
    pages["/latin1.html"] = (200, {"Content-Type": "text/html"},
                             html('<img src="img/latin1.jpg" alt="Café crème">', charset="windows-1252", encoding="cp1252"))
    pages["/wrongenc.html"] = (200, {"Content-Type": "text/html; charset=iso-8859-1"},
                               html('<img src="img/wrongenc.jpg" alt="Crème brûlée">', charset="iso-8859-1"))
    pages["/private/secret.html"] = (200, HTML, html('<img src="/img/secret.jpg" alt="Secret">'))
    pages["/loop"] = (302, {"Location": "/loop"}, b"")
    pages["/bomb-page.html"] = (200, dict(HTML, **{"Content-Encoding": "gzip"}), gzip_bomb(3_000_000))
    pages["/notes.txt"] = (200, {"Content-Type": "text/plain"}, b"plain text, not a page")
    pages["/robots.txt"] = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n")
    photo = jpeg(96, 72)
    for name in ["a", "a2", "shared", "s-large", "lazy1", "lazy2", "lazy3", "lazy4", "p-large", "pr", "ent", "fig",
                 "fig2", "fr", "de", "broken", "latin1", "wrongenc", "redir", "opt-meta", "opt-header"]:
        pages[f"/img/{name}.jpg"] = (200, JPEG, jpeg(96, 72, color=(len(name) * 20 % 255, 40, 90)))
    pages["/sub/b.jpg"] = (200, JPEG, photo)
    pages["/img/opt-image.jpg"] = (200, dict(JPEG, **{"X-Robots-Tag": "noimageai"}), photo)
    pages["/img/small.jpg"] = (200, JPEG, jpeg(40, 40))
    pages["/img/wide.jpg"] = (200, JPEG, jpeg(300, 64))
    pages["/img/corrupt.jpg"] = (200, JPEG, jpeg(96, 72)[:400])
    pages["/img/bomb.png"] = (200, {"Content-Type": "image/png"}, png_bomb())
    pages["/img/huge.jpg"] = (200, JPEG, b"\xff\xd8" + b"\x00" * 150_000)
    pages["/img/rotated.jpg"] = (200, JPEG, jpeg(96, 72, exif_orientation=6))
    buffer = io.BytesIO()
    Image.new("RGB", (96, 72)).save(buffer, "BMP")
    pages["/img/format.bmp"] = (200, {"Content-Type": "image/bmp"}, buffer.getvalue())
    site.pages.update(pages)
    return site
