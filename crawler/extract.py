"""HTML page -> image candidates: one pure function shared by the Scrapy spider and the WARC reader.

``extract_candidates(html_bytes, page_url, headers)`` returns ``(candidates, counts)``: one dict per
(page, image, text) reference that can become a candidate, and a ``Counter`` of what was found.
``parse_page`` returns the same plus the page's links, its opt-out directive and the references that
cannot become candidates (decorative images, ``data:`` URIs, ...), each with a snake_case reason.
Nothing here does I/O.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import re
from typing import Any, Iterable, Mapping
from urllib.parse import urljoin, urlsplit, urlunsplit

import lxml.etree
import lxml.html
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, resolve_encoding

#: ``<img>`` attributes that hold the real image of lazy-loading pages, most specific first.
LAZY_SRC_ATTRS = ("data-src", "data-original", "data-lazy-src")
SRCSET_ATTRS = ("data-srcset", "srcset")
#: Robots directives by which a page or image opts out of AI training / image indexing, strongest first.
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noimageindex")
#: ``<meta name=...>`` values whose robots directives apply to us.
ROBOTS_META_NAMES = ("robots", "lait")
PAGE_TEXT_CHARS = 1000
INVISIBLE_TAGS = ("script", "style", "noscript", "template", "head")
_WHITESPACE = re.compile(r"\s+")


@dataclasses.dataclass
class Page:
    """What one HTML page holds for the crawl."""

    url: str
    lang: str | None = None
    title: str | None = None
    text: str | None = None
    opt_out: str | None = None  # the page's opt-out reason (``opt_out_noai``, ...) or None
    nofollow: bool = False
    links: list[str] = dataclasses.field(default_factory=list)
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejects: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # references that are not candidates
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)


#: What a later reference without a figcaption hashes in its place when an earlier one had one (normalised
#: text never holds a control character), so that which of the two comes first does not decide the ids.
NO_FIGCAPTION = "\x01"


def candidate_id(page_url: str, image_url: str, alt: str | None, title: str | None,
                 figcaption: str | None = None) -> str:
    """Stable id of a (page, image, text) candidate: sha1 over page, image, alt and title.

    ``parse_page`` passes a ``figcaption`` only to tell apart a later reference of a page that would
    otherwise repeat an earlier one's id with another figcaption (two figures of one image with different
    captions); every other candidate keeps the id crawls have always given it, so folders crawled before
    still dedupe on a rerun.
    """
    parts = (page_url, image_url, alt, title) + ((figcaption,) if figcaption else ())
    key = "\x00".join(part or "" for part in parts)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def image_id(image_bytes: bytes) -> str:
    """Content id of an image: sha256 hex of its bytes."""
    return hashlib.sha256(image_bytes).hexdigest()


def header_value(headers: Mapping | None, name: str) -> str | None:
    """A header's value (values joined by ``, ``) from a dict of str/bytes, case-insensitively."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key.lower() != wanted:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        return ", ".join(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values)
    return None


def opt_out_reason(directives: Iterable[str], agent: str = "lait") -> str | None:
    """The opt-out reason in robots directives (meta robots content or X-Robots-Tag values), if any.

    X-Robots-Tag values may be scoped to one user agent (``googlebot: noindex``); those scoped to
    another agent do not apply to us.
    """
    found = set()
    for value in directives:
        for token in str(value).lower().split(","):
            token = token.strip()
            if ":" in token:
                scope, _, token = token.partition(":")
                if scope.strip() not in ("*", agent):
                    continue
                token = token.strip()
            found.add(token)
    for directive in OPT_OUT_DIRECTIVES:
        if directive in found:
            return f"opt_out_{directive}"
    return None


def decode_html(body: bytes, headers: Mapping | None = None) -> str:
    """Decode a page, surviving a wrongly declared encoding.

    Valid UTF-8 with non-ASCII bytes is almost never another encoding by accident, so it wins over
    a declaration; otherwise the declared encoding (HTTP header, then ``<meta>``) is used when it
    decodes cleanly, and Windows-1252 with replacement characters is the last resort.
    """
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return body.decode(encoding, errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    declared = [http_content_type_encoding(header_value(headers, "Content-Type")), html_body_declared_encoding(body)]
    for label in declared:
        encoding = resolve_encoding(label) if label else None
        if not encoding:
            continue
        try:
            return body.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return body.decode("cp1252", errors="replace")


def normalize_text(value: str | None) -> str | None:
    """Collapse whitespace runs to one space and strip; ``None`` stays ``None``."""
    if value is None:
        return None
    return _WHITESPACE.sub(" ", value).strip()


def parse_srcset(value: str) -> list[tuple[str, float]]:
    """``srcset`` as (url, size) pairs: ``Nw`` gives N, ``Nx`` gives N, no descriptor gives 1.

    Parsed as the HTML standard does: a URL is a run of non-whitespace (commas inside it stay, as in
    ``/img/w_100,h_100/a.jpg``; trailing commas end the candidate), then its descriptors up to the
    next comma outside parentheses.
    """
    result = []
    pos, end = 0, len(value)
    while True:
        while pos < end and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= end:
            return result
        start = pos
        while pos < end and not value[pos].isspace():
            pos += 1
        url, descriptors = value[start:pos], ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start, depth = pos, 0
            while pos < end and (value[pos] != "," or depth):
                if value[pos] == "(":
                    depth += 1
                elif value[pos] == ")" and depth:
                    depth -= 1
                pos += 1
            descriptors = value[start:pos]
        size = 1.0
        for descriptor in descriptors.lower().split():
            if descriptor.endswith(("w", "x")):
                try:
                    size = float(descriptor[:-1])
                except ValueError:
                    size = 1.0
                break
        if url:
            result.append((url, size))


def _largest(srcsets: Iterable[str]) -> str | None:
    """The URL with the largest descriptor over several srcset values."""
    best, best_size = None, -1.0
    for srcset in srcsets:
        for url, size in parse_srcset(srcset):
            if size > best_size:
                best, best_size = url, size
    return best


def _clean_url(url: str) -> str:
    """Drop the fragment: ``a.jpg#x`` and ``a.jpg`` are one image."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(fragment=""))


def resolve_url(base_url: str, reference: str) -> str:
    """``reference`` resolved against ``base_url`` as a browser would, fragment dropped.

    Raises ValueError for a URL that cannot be fetched as written: a broken IPv6 host
    (``http://[bad/``), a port that is not a number from 0 to 65535 (``http://h:1:2/``), or credentials
    in it (``http://user:pw@h/``: browsers block such subresource requests, and Scrapy's robots.txt
    middleware failed on them with a traceback).
    """
    url = _clean_url(urljoin(base_url, reference))
    parts = urlsplit(url)
    parts.port  # noqa: B018 - parsing the port raises ValueError when it is not one
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        raise ValueError("credentials in the URL")
    return url


DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_page_url(url: str) -> str:
    """One spelling per page: scheme and host lower-cased, default port and fragment dropped, empty path ``/``.

    ``http://Host:80`` and ``http://host/#top`` are the page ``http://host/``. A URL that does not
    parse comes back without its fragment only (fetching it will give its reject).
    """
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return url.split("#", 1)[0]
    if host is None:
        return urlunsplit(parts._replace(fragment=""))
    scheme = parts.scheme.lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit((scheme, userinfo + at + netloc, parts.path or "/", parts.query, ""))


def _image_source(img: lxml.html.HtmlElement) -> str | None:
    """The URL of the largest version of an ``<img>``: picture sources, srcsets, lazy attributes, src."""
    srcsets = []
    # libxml2 does not know <source> is void, so the <img> may sit inside it: search the whole <picture>.
    for picture in img.iterancestors("picture"):
        for source in picture.iter("source"):
            srcsets.extend(source.get(attr) for attr in SRCSET_ATTRS if source.get(attr))
        break
    srcsets.extend(img.get(attr) for attr in SRCSET_ATTRS if img.get(attr))
    largest = _largest(srcsets)
    if largest and not largest.startswith("data:"):
        return largest
    for attr in LAZY_SRC_ATTRS + ("src",):
        value = (img.get(attr) or "").strip()
        if value:
            return value
    return largest


def _figcaption(img: lxml.html.HtmlElement) -> str | None:
    for ancestor in img.iterancestors("figure"):
        caption = ancestor.find(".//figcaption")
        if caption is not None:
            return normalize_text(caption.text_content()) or None
        return None
    return None


def _parse_document(text: str) -> lxml.html.HtmlElement:
    # lxml refuses str input carrying an XML encoding declaration; hand it UTF-8 bytes instead.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True)
    try:
        return lxml.html.document_fromstring(text.encode("utf-8"), parser=parser)
    except (lxml.etree.ParserError, ValueError):
        return lxml.html.document_fromstring(b"<html><body></body></html>", parser=parser)


def parse_page(html: bytes | str, page_url: str, headers: Mapping | None = None) -> Page:
    """Everything the crawl needs from one HTML page: candidates, rejected references, links, metadata."""
    text = html if isinstance(html, str) else decode_html(html, headers)
    doc = _parse_document(text)
    page = Page(url=page_url)
    page.lang = normalize_text(doc.get("lang") or doc.get("{http://www.w3.org/XML/1998/namespace}lang")) or None
    if not page.lang:
        page.lang = normalize_text((header_value(headers, "Content-Language") or "").split(",")[0]) or None
    title = doc.find(".//title")
    page.title = normalize_text(title.text_content()) if title is not None else None
    page.title = page.title or None
    visible = doc.xpath("//body//text()[not(" + " or ".join(f"ancestor::{t}" for t in INVISIBLE_TAGS) + ")]")
    page.text = (normalize_text(" ".join(visible)) or "")[:PAGE_TEXT_CHARS] or None

    base_url = page_url
    base = doc.find(".//base[@href]")
    if base is not None and base.get("href", "").strip():
        try:
            base_url = resolve_url(page_url, base.get("href").strip())
        except ValueError:  # a browser ignores a base it cannot parse
            page.counts["invalid_base"] += 1

    directives = [m.get("content", "") for m in doc.iter("meta") if (m.get("name") or "").lower() in ROBOTS_META_NAMES]
    header_directives = [header_value(headers, "X-Robots-Tag") or ""]
    page.opt_out = opt_out_reason(directives + header_directives)
    page.nofollow = any("nofollow" in d.lower() or "none" == d.strip().lower() for d in directives)
    if page.opt_out:
        page.counts[f"page/{page.opt_out}"] += 1

    seen_links = set()
    for anchor in doc.iter("a", "area"):
        href = (anchor.get("href") or "").strip()
        if not href:
            continue
        try:
            link = resolve_url(base_url, href)
        except ValueError:  # not followed; a link is not a record of the crawl
            page.counts["invalid_link"] += 1
            continue
        if urlsplit(link).scheme in ("http", "https") and link not in seen_links:
            seen_links.add(link)
            page.links.append(link)

    figcaption_of: dict[str, str | None] = {}  # candidate id -> the figcaption of its first reference
    for img in doc.iter("img"):
        page.counts["img"] += 1
        raw = _image_source(img)
        alt = normalize_text(img.get("alt"))
        title_text = normalize_text(img.get("title")) or None
        ref = {"page_url": page_url, "image_url": None, "alt": alt, "title": title_text}
        if not raw:
            _reject(page, ref, "no_image_url")
            continue
        if raw.lower().startswith("data:"):
            _reject(page, ref, "data_uri", detail=raw[:40])
            continue
        try:
            image_url = resolve_url(base_url, raw)
        except ValueError as exc:
            _reject(page, ref, "invalid_url", detail=f"{raw[:200]}: {exc}")
            continue
        ref["image_url"] = image_url
        if urlsplit(image_url).scheme not in ("http", "https"):
            _reject(page, ref, "unsupported_scheme")
            continue
        if alt == "":
            _reject(page, ref, "decorative_image")
            continue
        figcaption = _figcaption(img)
        if not alt and not title_text and not figcaption:
            _reject(page, ref, "no_text")
            continue
        candidate = dict(ref, figcaption=figcaption, page_lang=page.lang, page_title=page.title, page_text=page.text)
        key = candidate_id(page_url, image_url, alt, title_text)
        if figcaption_of.setdefault(key, figcaption) != figcaption:  # same image and alt/title, another caption
            key = candidate_id(page_url, image_url, alt, title_text, figcaption or NO_FIGCAPTION)
        candidate["candidate_id"] = key
        page.candidates.append(candidate)
        page.counts["candidate"] += 1
    return page


def _reject(page: Page, ref: dict, reason: str, detail: str | None = None) -> None:
    row = dict(ref, reason=reason, detail=detail)
    if ref.get("image_url"):
        row["candidate_id"] = candidate_id(ref["page_url"], ref["image_url"], ref.get("alt"), ref.get("title"))
    page.rejects.append(row)
    page.counts[reason] += 1


def extract_candidates(html: bytes | str, page_url: str, headers: Mapping | None = None) -> tuple[list[dict], collections.Counter]:
    """The (page, image, text) candidates of one HTML page and the counts of what was found and skipped."""
    page = parse_page(html, page_url, headers)
    return page.candidates, page.counts
