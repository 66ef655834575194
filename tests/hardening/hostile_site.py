"""A hostile website on 127.0.0.1 (port 0): what the open web throws at a crawler, plus good pages.

Shared by tests/hardening/test_hostile_crawl.py and benchmarks/soak.py. Each hostile path is one
case; ``HOSTILE_REFERENCES`` and ``HOSTILE_PAGES`` say which rows the crawl must record as rejects.
Sizes are parameters so the test stays small where size is not the point and the soak can go big.
"""
from __future__ import annotations

import gzip
import http.server
import io
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

from PIL import Image

HTML = "text/html; charset=utf-8"


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A small JPEG whose bytes differ per seed (so image ids differ)."""
    image = Image.new("RGB", (width, height), (seed * 37 % 255, 90, 160))
    image.putpixel((seed % width, seed % height), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb by header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def gzip_of_zeros(size: int, prefix: bytes = b"") -> bytes:
    """``prefix`` then ``size`` zero bytes, gzip-compressed in streaming chunks (about 1000:1)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as f:
        f.write(prefix)
        block = b"\x00" * (1 << 20)
        left = size
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
    return out.getvalue()


def exif_garbage_jpeg(width: int, height: int) -> bytes:
    """A valid JPEG with an APP1 'Exif' segment full of garbage (bad TIFF header and offsets)."""
    return with_exif_garbage(jpeg(width, height, seed=99))


def with_exif_garbage(body: bytes) -> bytes:
    """A JPEG's bytes with an APP1 'Exif' segment of garbage inserted after the SOI marker."""
    garbage = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + bytes(range(256)) * 4
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return body[:2] + segment + body[2:]


#: Hostile image references on /images.html: image path -> the reject reasons accepted for it.
HOSTILE_REFERENCES = {
    "/img/gzip-bomb.jpg": {"too_large"},
    "/img/big.jpg": {"too_large"},
    "/img/giant.png": {"decompression_bomb"},
    "/img/truncated.jpg": {"image_decode_error"},
    "/img/wrong-magic.jpg": {"image_decode_error"},
    "/img/html.jpg": {"image_decode_error"},
    "/img/zero.jpg": {"empty_image", "image_decode_error"},
    "/img/reset.jpg": {"connection_error"},
    "/img/trickle.jpg": {"timeout"},
    "/img/chain.jpg": {"too_many_redirects"},
    "file:///etc/passwd": {"unsupported_scheme"},
}
#: Hostile pages linked from the index: path -> the reject reasons accepted for the page itself.
HOSTILE_PAGES = {
    "/trickle.html": {"timeout"},
    "/reset.html": {"connection_error"},
    "/chain?n=0": {"too_many_redirects"},
    "/gzip-bomb.html": {"too_large"},
}
#: Links that must never be fetched (not http(s), or off the allowed domains): no row, no request.
NEVER_FOLLOWED = ("file:///etc/passwd", "file:../../secret.html")
#: Pages that are odd but valid: they must give their good candidates.
ODD_GOOD_PAGES = ("/invalid-utf8.html", "/nested.html", "/exif.html")


class HostileSite:
    """Serves the hostile cases and ``good_pages`` good pages (one good image each); a context manager."""

    def __init__(self, good_pages: int = 6, big_image_mb: int = 50, nested_mb: float = 10.0,
                 bomb_mb: int = 50, side: int = 96, hostile: bool = True, silent_robots: bool = False):
        self.good_pages, self.side, self.hostile = good_pages, side, hostile  # hostile=False: the good pages only
        # A robots.txt that never answers disallows the whole site (RFC 9309, unreachable): off by default,
        # so that the other cases are crawled.
        self.silent_robots = silent_robots
        self.big_image_bytes = big_image_mb * 2**20
        self.stop = threading.Event()
        self.pages = self._build(nested_mb, bomb_mb)
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a client that never sends its request does not hold a thread forever

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    site.handle(self)
                except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
                    pass  # the crawler hanging up on a capped or timed-out response is the point

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def good_image_paths(self) -> list[tuple[str, str]]:
        """(page path, image path) of every candidate the crawl must keep."""
        pairs = [(f"/good/{i}.html", f"/img/good{i}.jpg") for i in range(self.good_pages)]
        if not self.hostile:
            return pairs
        pairs += [("/images.html", "/img/fine.jpg"), ("/invalid-utf8.html", "/img/utf8.jpg"),
                  ("/nested.html", "/img/nested.jpg"), ("/exif.html", "/img/exif.jpg")]
        return pairs

    def _build(self, nested_mb: float, bomb_mb: int) -> dict[str, tuple[dict, bytes]]:
        page = lambda body, head="": (f"<!DOCTYPE html><html lang=\"en\"><head><title>Hostile</title>{head}</head>"
                                      f"<body>{body}</body></html>").encode()
        links = [f"/good/{i}.html" for i in range(self.good_pages)] + list(HOSTILE_PAGES) + list(ODD_GOOD_PAGES)
        links += list(NEVER_FOLLOWED)
        links.append("/images.html")
        if not self.hostile:
            links = [f"/good/{i}.html" for i in range(self.good_pages)]
        pages: dict[str, tuple[dict, bytes]] = {}
        pages["/"] = ({"Content-Type": HTML}, page("".join(f'<a href="{link}">x</a>' for link in links)))
        for i in range(self.good_pages):
            pages[f"/good/{i}.html"] = ({"Content-Type": HTML},
                                        page(f'<p>Good page {i}.</p><img src="/img/good{i}.jpg" alt="Good picture {i}">'))
            pages[f"/img/good{i}.jpg"] = ({"Content-Type": "image/jpeg"}, jpeg(self.side, self.side, seed=i + 1))
        refs = "".join(f'<img src="{src}" alt="Hostile {n}">' for n, src in enumerate(HOSTILE_REFERENCES))
        pages["/images.html"] = ({"Content-Type": HTML}, page(refs + '<img src="/img/fine.jpg" alt="Fine picture">'))
        pages["/img/fine.jpg"] = ({"Content-Type": "image/jpeg"}, jpeg(self.side, self.side, seed=200))
        # Invalid UTF-8 declared as UTF-8: stray continuation bytes and a truncated sequence.
        pages["/invalid-utf8.html"] = ({"Content-Type": HTML},
                                       b'<html lang="en"><body><p>Bad \xff\xfe bytes \xc3</p>'
                                       b'<img src="/img/utf8.jpg" alt="Caf\xe9 \x80\xc3 image"></body></html>')
        pages["/img/utf8.jpg"] = ({"Content-Type": "image/jpeg"}, jpeg(self.side, self.side, seed=201))
        depth = max(1, int(nested_mb * 2**20) // 11)  # "<div><span>" is 11 bytes
        pages["/nested.html"] = ({"Content-Type": HTML},
                                 b'<html lang="en"><body><img src="/img/nested.jpg" alt="Before the nesting">'
                                 + b"<div><span>" * depth + b"deep" + b"</span></div>" * (depth // 4) + b"</body></html>")
        pages["/img/nested.jpg"] = ({"Content-Type": "image/jpeg"}, jpeg(self.side, self.side, seed=202))
        pages["/exif.html"] = ({"Content-Type": HTML}, page('<img src="/img/exif.jpg" alt="Garbage EXIF">'))
        pages["/img/exif.jpg"] = ({"Content-Type": "image/jpeg"}, exif_garbage_jpeg(self.side, self.side))
        pages["/gzip-bomb.html"] = ({"Content-Type": HTML, "Content-Encoding": "gzip"},
                                    gzip_of_zeros(bomb_mb * 2**20, b"<html><body>"))
        pages["/img/gzip-bomb.jpg"] = ({"Content-Type": "image/jpeg", "Content-Encoding": "gzip"},
                                       gzip_of_zeros(bomb_mb * 2**20, b"\xff\xd8\xff\xe0"))
        pages["/img/giant.png"] = ({"Content-Type": "image/png"}, png_header_only(200_000, 200_000))
        good = jpeg(self.side, self.side, seed=203)
        pages["/img/truncated.jpg"] = ({"Content-Type": "image/jpeg"}, good[: len(good) // 3])
        pages["/img/wrong-magic.jpg"] = ({"Content-Type": "image/jpeg"}, b"\x00\x01\x02\x03" + good[4:])
        pages["/img/html.jpg"] = ({"Content-Type": "image/jpeg"}, page("<p>not an image</p>"))
        pages["/img/zero.jpg"] = ({"Content-Type": "image/jpeg"}, b"")
        return pages

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        """Answer one GET: a hostile behaviour by path, else a stored page, else 404."""
        parts = urlsplit(request.path)
        path = parts.path
        if path == "/robots.txt" and self.silent_robots:
            self.stop.wait(60)  # never answers (until the site stops): the crawler's timeout must end it
            return
        if path in ("/reset.html", "/img/reset.jpg"):
            # SO_LINGER 0: close() sends a TCP reset instead of a clean FIN.
            request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close_connection = True
            request.connection.close()
            return
        if path in ("/trickle.html", "/img/trickle.jpg"):
            request.send_response(200)
            request.send_header("Content-Type", "image/jpeg" if path.endswith(".jpg") else HTML)
            request.send_header("Content-Length", "100000")
            request.end_headers()
            while not self.stop.is_set():  # one byte every 0.2 s, forever
                request.wfile.write(b"<")
                request.wfile.flush()
                time.sleep(0.2)
            return
        if path in ("/chain", "/img/chain.jpg"):
            n = int(parse_qs(parts.query).get("n", ["0"])[0])
            base = "/chain" if path == "/chain" else "/img/chain.jpg"
            request.send_response(302)
            request.send_header("Location", f"{base}?n={n + 1}")  # a new URL every hop: no loop to detect
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if path == "/img/big.jpg":
            request.send_response(200)
            request.send_header("Content-Type", "image/jpeg")
            request.send_header("Content-Length", str(self.big_image_bytes))
            request.end_headers()
            request.wfile.write(b"\xff\xd8\xff\xe0")
            block, sent = b"\x00" * (1 << 20), 4
            while sent < self.big_image_bytes and not self.stop.is_set():
                chunk = block[: self.big_image_bytes - sent]
                request.wfile.write(chunk)
                sent += len(chunk)
            return
        if path in self.pages:
            headers, body = self.pages[path]
            request.send_response(200)
        else:
            headers, body = {"Content-Type": HTML}, b"<html><body>not found</body></html>"
            request.send_response(404)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def __enter__(self) -> "HostileSite":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


#: Runs argv[1:] and prints the peak RSS (KiB) over it and every process it waited for, on stderr.
_PEAK_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
                 "print('LAIT_PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                 "sys.exit(code)")


def run_with_peak_rss(command: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` under a small wrapper process; returns the result and the peak RSS in MiB of the
    command and its children (a fresh wrapper, so nothing else of the caller's is counted)."""
    result = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *command], env=env, capture_output=True, text=True,
                            timeout=timeout)
    peak = [line for line in result.stderr.splitlines() if line.startswith("LAIT_PEAK_KIB ")]
    return result, int(peak[-1].split()[1]) / 1024 if peak else float("nan")
