"""A mock website for the crawl tests, served on 127.0.0.1 at a free port: one page per case.

Scenarios come from the path: static pages and images from a dict, plus ``/status?n=404``,
``/delay?s=2``, ``/redirect?to=...`` and a redirect loop. Every request is logged so tests can
count fetches per path.
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
    """Serves ``pages`` ({path: (status, headers, body)}) and the scenario paths; logs every request."""

    def __init__(self, pages: dict[str, tuple[int, dict, bytes]]):
        self.pages = pages
        self.log: list[str] = []
        self.counts: collections.Counter = collections.Counter()
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
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
            return self.pages[parts.path]
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
