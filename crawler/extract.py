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
import functools
import hashlib
import logging
import re
import unicodedata
from typing import Any, Iterable, Mapping, NamedTuple
from urllib.parse import urljoin, urlsplit, urlunsplit

import lxml.etree
import lxml.html
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, resolve_encoding
from w3lib.url import safe_url_string

from crawler.images import DEFAULT_FORMATS

logger = logging.getLogger(__name__)

#: ``<img>`` attributes that hold the real image of lazy-loading pages, most specific first.
LAZY_SRC_ATTRS = ("data-src", "data-original", "data-lazy-src")
#: ``srcset`` and the attributes lazy-loading scripts keep it in until the image scrolls into view.
SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "srcset")
#: Robots directives by which a page or image opts out of AI training / image indexing, strongest first.
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noimageindex")
#: Directives that opt an image out only on the image's own response: ``noindex`` there keeps the image out of
#: image search (search engines' documented way), while a page's ``noindex`` is about the page, not its images.
IMAGE_OPT_OUT_DIRECTIVES = OPT_OUT_DIRECTIVES + ("noindex", "none")
#: ``<meta name=...>`` values whose robots directives apply to us.
ROBOTS_META_NAMES = ("robots", "lait")
PAGE_TEXT_CHARS = 1000
INVISIBLE_TAGS = ("script", "style", "noscript", "template", "head")
_WHITESPACE = re.compile(r"\s+")
#: Control characters that are not whitespace (``\s`` takes the others): never text, and ``NO_FIGCAPTION``
#: relies on normalised text holding none.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
#: Pillow format names of the MIME types a ``<picture>``'s ``<source type>`` may give; a source whose type
#: is not here, or names a format the crawl does not allow, is skipped as a browser skips a type it cannot show.
SOURCE_TYPE_FORMATS = {
    "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG", "image/apng": "PNG",
    "image/gif": "GIF", "image/webp": "WEBP", "image/avif": "AVIF", "image/jxl": "JXL", "image/heic": "HEIF",
    "image/heif": "HEIF", "image/bmp": "BMP", "image/tiff": "TIFF", "image/svg+xml": "SVG", "image/x-icon": "ICO",
    "image/vnd.microsoft.icon": "ICO", "image/jp2": "JPEG2000",
}
#: Byte-order marks, UTF-32 before UTF-16: the UTF-32-LE mark begins with the UTF-16-LE one.
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
#: Python codecs that decode bytes to text but are no page encoding (a page may declare them all the same):
#: the escape codecs turn ``\ud800`` in the text into a lone surrogate, and browsers refuse UTF-7.
NOT_PAGE_ENCODINGS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined", "utf-7"})
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    #: ``<meta http-equiv="refresh">``: (its delay in whole seconds, the http(s) URL it moves to), or None
    refresh: tuple[int, str] | None = None
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
    captions), and for ``image_url`` the image's first spelling on the page with that text (a later reference that
    spells its ``url_key`` otherwise with the same text repeats the first one's id); every other candidate keeps
    the id crawls have always given it, so folders crawled before still dedupe on a rerun.
    """
    parts = (page_url, image_url, alt, title) + ((figcaption,) if figcaption else ())
    key = "\x00".join(part or "" for part in parts)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def image_id(image_bytes: bytes) -> str:
    """Content id of an image: sha256 hex of its bytes."""
    return hashlib.sha256(image_bytes).hexdigest()


def _header_text(value) -> str:
    """A header name or value as text: bytes (Scrapy's, warcio's) are Latin-1, as HTTP carries them."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def header_value(headers: Mapping | None, name: str) -> str | None:
    """A header's value (values joined by ``, ``) from a dict of str/bytes, case-insensitively."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if _header_text(key).lower() != wanted:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        return ", ".join(_header_text(v) for v in values)
    return None


def robots_tag_lines(headers) -> list[str]:
    """Each X-Robots-Tag header line of a response, in order, as ``opt_out_reason(lines=...)`` reads them.

    ``headers``: the response's (name, value) header lines (warcio's ``http_headers.headers``), or anything with
    ``items()`` giving a name and a value or a list of the values of its lines (Scrapy's ``Headers``, a dict of
    ``getlist`` values, http.client's message). A value that ``crawler.fetch.header_dict`` joined is one line here:
    hand this the lines before they are joined.
    """
    if not headers:
        return []
    lines = []
    for name, value in headers.items() if hasattr(headers, "items") else headers:
        if _header_text(name).lower() == "x-robots-tag":
            lines.extend(_header_text(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return lines


#: Robots rules that take a value after a colon: ``unavailable_after: 25 Jun 2010 15:00:00 PST`` at the start of an
#: X-Robots-Tag line is a rule of the line, not the name of the user agent the line is for.
VALUE_RULES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
#: What may name a user agent before a line's rules: one word (no space, comma or colon in it).
_AGENT_NAME = re.compile(r"[^\s,:]+")


def _rules_for(line: str, agent: str) -> str:
    """The rules of one X-Robots-Tag line that apply to ``agent``: a user agent's name before the line's rules
    (``googlebot: noindex, nofollow``) scopes them all, as Google reads it; ``""`` when the line is for another."""
    name, colon, rules = line.partition(":")
    name = name.strip().lower()
    if not colon or name in VALUE_RULES or not _AGENT_NAME.fullmatch(name):
        return line  # for every agent (``noai``, ``unavailable_after: ...``, ``noindex, max-snippet: 20``)
    return rules if name in ("*", agent) else ""


def opt_out_reason(directives: Iterable[str], agent: str = "lait", image: bool = False,
                   lines: Iterable[str] = ()) -> str | None:
    """The opt-out reason in robots directives (meta robots content, X-Robots-Tag values or lines), if any.

    ``directives`` are read rule by rule: one scoped to another user agent (``googlebot: noai``) does not apply to
    us, the rules after it do (a value joined from several header lines, ``otherbot: noindex, noai``, may hold a
    line of ours after one of theirs). ``lines`` are X-Robots-Tag header lines told apart, each read whole: a user
    agent's name before a line's rules scopes them all (``otherbot: noindex, noai`` is otherbot's alone; ``lait: noai``
    and a line without a name are ours); ``unavailable_after:`` and the other ``VALUE_RULES`` name no agent.
    ``image``: the directives are an image response's own X-Robots-Tag, where ``noindex`` (and ``none``) opt the image
    out too (``opt_out_noindex``).
    """
    found = set()
    for value in [*directives, *(_rules_for(_header_text(line), agent) for line in lines)]:
        for token in str(value).lower().split(","):
            token = token.strip()
            if ":" in token:
                scope, _, token = token.partition(":")
                if scope.strip() not in ("*", agent):
                    continue
                token = token.strip()
            found.add(token)
    for directive in IMAGE_OPT_OUT_DIRECTIVES if image else OPT_OUT_DIRECTIVES:
        if directive in found:
            return "opt_out_noindex" if directive == "none" else f"opt_out_{directive}"
    return None


def _wide_encoding(body: bytes) -> str | None:
    """UTF-32 or UTF-16 (and its byte order) of a page without a byte-order mark, told by where the NUL bytes
    of its ASCII markup fall in its first bytes; None when they do not fall as in either."""
    sample = body[:64]
    for encoding, width, zeros in (("utf-32-le", 4, (1, 2, 3)), ("utf-32-be", 4, (0, 1, 2)),
                                   ("utf-16-le", 2, (1,)), ("utf-16-be", 2, (0,))):
        units = [sample[i:i + width] for i in range(0, len(sample) - width + 1, width)]
        if len(units) >= 2 and all(any(unit) and not any(unit[k] for k in zeros) for unit in units):
            return encoding
    return None


def _page_encoding(label: str | None) -> str | None:
    """The Python codec of a declared charset, or None when it is unknown or no page encoding."""
    encoding = resolve_encoding(label) if label else None
    if not encoding:
        return None
    try:
        b"".decode(encoding)  # LookupError for an unknown codec and for bytes-to-bytes ones (base64, zlib, ...)
    except LookupError:
        return None
    name = codecs.lookup(encoding).name.replace("_", "-")
    return None if name in NOT_PAGE_ENCODINGS else name


@functools.lru_cache(maxsize=64)
def _reads_ascii(encoding: str) -> bool:
    """Whether an encoding decodes ASCII markup as the same text (not EBCDIC's cp037, cp500, ...)."""
    sample = b'<html><head><meta charset="x"></head><body><img src="a.jpg" alt="A b"></body></html>'
    try:
        return sample.decode(encoding) == sample.decode("ascii")
    except (UnicodeError, LookupError):
        return False


#: A ``<meta>`` tag that may declare the charset; the ``<body>`` tag, which ends the ``<head>`` where one counts.
_META_CHARSET = re.compile(rb"<meta[^>]{0,1024}?charset", re.IGNORECASE)
_BODY_TAG = re.compile(rb"<body[\s>/]", re.IGNORECASE)
#: How far into a page a ``<meta>`` charset is looked for (w3lib itself reads 4,096 bytes), and how many
#: ``<meta>`` tags that spell "charset" are tried there: bounds on a page made to be slow.
HEAD_SCAN_BYTES = 64 * 1024
LATE_META_TRIES = 8


def _meta_declared_encoding(body: bytes) -> str | None:
    """The charset a ``<meta>`` declares, found where browsers find it: w3lib reads the first 4,096 bytes; a
    declaration further down the ``<head>``, after a long inline script or style, is taken too (browsers
    re-read the page on meeting it), up to ``HEAD_SCAN_BYTES``; one after ``<body>`` is not."""
    label = html_body_declared_encoding(body)
    if label or len(body) <= 4096:
        return label
    head = body[:HEAD_SCAN_BYTES]
    body_tag = _BODY_TAG.search(head)
    head = head[:body_tag.start()] if body_tag else head
    for tries, match in enumerate(_META_CHARSET.finditer(head)):
        if tries == LATE_META_TRIES:
            break
        label = html_body_declared_encoding(head[match.start():])
        if label:
            return label
    return None


def decode_html(body: bytes, headers: Mapping | None = None) -> str:
    """Decode a page, surviving a wrongly declared encoding.

    A byte-order mark decides first (UTF-32 before UTF-16), then the NUL bytes of UTF-16/32 markup
    without one. Valid UTF-8 with non-ASCII bytes is almost never another encoding by accident, so it
    wins over a declaration (a stray NUL does not change that); otherwise the declared encoding (HTTP header, then
    ``<meta>``, further down a long ``<head>`` too) is used when it decodes cleanly, then UTF-8, and Windows-1252 with replacement
    characters is the last resort. A declaration of UTF-16/32 on a page without NUL bytes, of an encoding
    that does not read ASCII as ASCII (EBCDIC) on bytes that are all ASCII, or of a codec that is no page
    encoding (``unicode_escape``, ``utf-7``, ...), is ignored.
    """
    for bom, encoding in BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(encoding, errors="replace")
    has_nul = b"\x00" in body
    wide = _wide_encoding(body) if has_nul else None
    if wide:
        return body.decode(wide, errors="replace")
    if not body.isascii():  # (a stray NUL in UTF-8 markup does not make it another encoding)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            pass
    ascii_markup = body.isascii() and not has_nul
    declared = [http_content_type_encoding(header_value(headers, "Content-Type")), _meta_declared_encoding(body)]
    for encoding in filter(None, map(_page_encoding, declared)):
        if encoding.startswith(("utf-16", "utf-32")) and not has_nul:
            continue  # ASCII markup without NUL bytes is not UTF-16/32 (a <meta> claiming it is wrong)
        if ascii_markup and not _reads_ascii(encoding):
            continue  # ASCII bytes under an EBCDIC label: the label is wrong (ISO-2022-JP, 7-bit, stays)
        try:
            text = body.decode(encoding)
        except UnicodeError:
            continue
        if not _SURROGATE.search(text):
            return text
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", errors="replace")


def normalize_text(value: str | None) -> str | None:
    """Collapse whitespace runs to one space and strip, dropping control characters; a text of nothing but
    invisible format characters (``&#8203;``, a zero-width space) is ``""``. ``None`` stays ``None``."""
    if value is None:
        return None
    text = _WHITESPACE.sub(" ", _CONTROL.sub("", value)).strip()
    if all(ch == " " or unicodedata.category(ch) == "Cf" for ch in text):  # (stops at the first visible one)
        return ""
    return text


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
    """One spelling per page: as Scrapy requests it (non-ASCII and spaces percent-encoded, the host in IDNA),
    scheme and host lower-cased, default port and fragment dropped, empty path ``/``.

    ``http://Host:80`` and ``http://host/#top`` are the page ``http://host/``, and ``/café menu.html`` is
    ``/caf%C3%A9%20menu.html``, the spelling of the response's URL. A URL that does not parse comes back
    without its fragment only (fetching it will give its reject).
    """
    try:
        parts = urlsplit(safe_url_string(url.strip()))
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


_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def request_url(url: str) -> str:
    """The spelling a page is requested in: ``canonical_page_url`` with its escapes in upper case (RFC 3986:
    ``%c3`` is ``%C3``), its query parameters in the order the link gives them (``url_key`` sorts them)."""
    return _ESCAPE.sub(lambda escape: escape.group(0).upper(), canonical_page_url(url))


def _sorted_query(url: str) -> str:
    """``url`` with its query parameters sorted by name; the values of a repeated name keep their order (a list,
    whose order may mean something), as does a query already in order (its spelling is unchanged)."""
    base, mark, query = url.partition("?")
    if "&" not in query:
        return url
    return base + mark + "&".join(sorted(query.split("&"), key=lambda parameter: parameter.partition("=")[0]))


def url_key(url: str) -> str:
    """The spelling URLs are compared on: ``request_url`` with its query parameters sorted by name.
    ``/größe 1.jpg``, ``/gr%C3%B6%C3%9Fe%201.jpg`` and ``/gr%c3%b6%c3%9fe%201.jpg`` are one URL, as the server sees
    it, and ``/p?b=2&a=1`` is ``/p?a=1&b=2``, as Scrapy's request fingerprint has it (a page linked both ways is
    crawled once)."""
    return _sorted_query(request_url(url))


def _source_allowed(source: lxml.html.HtmlElement, formats: frozenset[str]) -> bool:
    """Whether a ``<picture>`` ``<source>`` may be chosen: no ``type``, or one of an allowed format (no formats
    named: every format is allowed, as in ``crawler.images.validate_image``)."""
    mime = (source.get("type") or "").split(";", 1)[0].strip().lower()
    return not mime or not formats or SOURCE_TYPE_FORMATS.get(mime) in formats


def _is_data(url: str) -> bool:
    return url.lstrip().lower().startswith("data:")


#: Where a fold of srcsets starts: (the first ``data:`` placeholder, the largest other URL, its size).
_NO_SRCSET = (None, None, -1.0)


def _fold_srcsets(srcsets: Iterable[str], state: tuple = _NO_SRCSET) -> tuple:
    """``state`` (see ``_NO_SRCSET``) carried on over ``srcsets`` in order: the first ``data:`` URL is the
    placeholder, the first URL of the largest size is the best."""
    placeholder, best, best_size = state
    for srcset in srcsets:
        for url, size in parse_srcset(srcset):
            if _is_data(url):
                placeholder = placeholder or url
            elif size > best_size:
                best, best_size = url, size
    return placeholder, best, best_size


def _image_source(img: lxml.html.HtmlElement, formats: frozenset[str], ancestry: _Ancestry | None = None) -> str | None:
    """The URL of the largest version of an ``<img>``: picture sources of an allowed type, srcsets, lazy
    attributes, src.

    A ``data:`` URI is a lazy-loading page's placeholder (a 1x1 GIF, a blank SVG) wherever it stands: any URL
    that can be fetched wins over it, and it comes back only when the ``<img>`` has nothing else (its reject).
    ``ancestry`` is the page's (``parse_page``'s): a picture's sources are read once, not again for each of its
    ``<img>`` (a 1 MB srcset shared by 100 of them took 50 s). ``formats`` must be the same for all of its calls.
    """
    ancestry = ancestry or _Ancestry()
    state = _NO_SRCSET
    # libxml2 does not know <source> is void, so the <img> may sit inside it: search the whole <picture>.
    picture = ancestry.around(img).picture
    if picture is not None:
        if picture not in ancestry.pictures:
            ancestry.pictures[picture] = _fold_srcsets(
                source.get(attr) for source in picture.iter("source") if _source_allowed(source, formats)
                for attr in SRCSET_ATTRS if source.get(attr))
        state = ancestry.pictures[picture]
    placeholder, best, _ = _fold_srcsets((img.get(attr) for attr in SRCSET_ATTRS if img.get(attr)), state)
    if best:
        return best
    for attr in LAZY_SRC_ATTRS + ("src",):
        value = (img.get(attr) or "").strip()
        if value and _is_data(value):
            placeholder = placeholder or value
        elif value:
            return value
    return placeholder


#: Elements that a browser lays out on lines of their own: their text is a word of its own (as ``<br>``'s break
#: is), where inline elements (``<b>``, ``<a>``, ``<span>``) run on within a word.
BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup",
    "hr", "legend", "li", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "ul",
})


def _rendered_text(element: lxml.html.HtmlElement) -> str:
    """An element's visible text as a browser lays it out: a space at each ``<br>`` and block element
    (``text_content()`` glued ``Sunset<br>Photo: J. Doe`` into ``SunsetPhoto: J. Doe``), none inside a word
    written across inline elements, nothing of ``INVISIBLE_TAGS``. Iterative: the tree may nest 2,048 deep."""
    parts = []
    walk = lxml.etree.iterwalk(element, events=("start", "end"))
    for event, node in walk:
        if not isinstance(node.tag, str):  # (a processing instruction: no text of its own, but its tail)
            if event == "end" and node is not element:
                parts.append(node.tail or "")
            continue
        block = node.tag in BLOCK_TAGS and node is not element
        if event == "start":
            if node.tag in INVISIBLE_TAGS and node is not element:
                walk.skip_subtree()  # (its "end" still comes, for its tail)
            else:
                parts.append((" " if block else "") + (node.text or ""))
        elif node is not element:  # (the element's own tail is not its text)
            parts.append((" " if block else "") + (node.tail or ""))
    return "".join(parts)


def _visible_text(doc: lxml.html.HtmlElement) -> list[str]:
    """The text of the page's ``<body>`` outside ``INVISIBLE_TAGS``, in document order, one string per text node: what
    ``//body//text()[not(ancestor::script or ancestor::style or ...)]`` selected, in one pass over the tree. That
    XPath's ancestor test made a page of many elements quadratic (16,000 paragraphs took 5 s); the walk skips each
    invisible element's subtree and keeps its tail, which is its parent's text. Iterative: the tree may nest 2,048 deep.
    """
    parts: list[str] = []
    for body in doc.iter("body"):
        if any(True for _ in body.iterancestors("body", *INVISIBLE_TAGS)):
            continue  # (a body in a body is read with the outer one; one in an invisible element is not read)
        if body.text:
            parts.append(body.text)
        # (element, its children still to read); iterating an element gives its comments and processing instructions
        # too (iterwalk does not), whose text is no text node but whose tail is
        stack = [(body, iter(body))]
        while stack:
            node = next(stack[-1][1], None)
            if node is None:
                done, _ = stack.pop()
                if stack and done.tail:  # (the body's own tail is outside it)
                    parts.append(done.tail)
            elif isinstance(node.tag, str) and node.tag not in INVISIBLE_TAGS:
                if node.text:
                    parts.append(node.text)
                stack.append((node, iter(node)))
            elif node.tail:
                parts.append(node.tail)
    return parts


class _Around(NamedTuple):
    """The nearest ``<template>``, ``<figure>`` and ``<picture>`` around an element (None: none)."""

    template: Any = None
    figure: Any = None
    picture: Any = None


_NOTHING_AROUND = _Around()


class _Ancestry:
    """What the elements of one page take from their ancestors, each worked out once a page (``parse_page``'s).

    Many images share ancestors: walking up from each image (up to 2,048 levels) and reading a shared caption, title
    or ``<picture>`` again for each made a page's work grow with images times depth or size (10,000 images 2,000 deep
    took 20 s; one 1 MB caption over 100 images 20 s). A walk up stops at the first element already worked out and
    enters all it passed, so each element is visited once. Keyed by the element itself, which also keeps lxml's
    proxy alive (an ``id()`` could be reused once it goes). Valid while the tree is not changed.
    """

    def __init__(self) -> None:
        self.within: dict = {}  # element -> the _Around of its ancestors and itself
        self.captions: dict = {}  # <figure> -> its caption
        self.titles: dict = {}  # element -> the title it passes on to its descendants (its own or inherited)
        self.pictures: dict = {}  # <picture> -> the fold of its sources' srcsets (_fold_srcsets)

    def around(self, element: lxml.html.HtmlElement) -> _Around:
        """The nearest ``<template>``, ``<figure>`` and ``<picture>`` among the element's ancestors (as
        ``element.iterancestors(tag)`` finds them: the tag's exact name)."""
        passed = []
        ancestor = element.getparent()
        while ancestor is not None and ancestor not in self.within:
            passed.append(ancestor)
            ancestor = ancestor.getparent()
        found = _NOTHING_AROUND if ancestor is None else self.within[ancestor]
        for ancestor in reversed(passed):  # (outermost first: a nearer one replaces it)
            if ancestor.tag in _Around._fields:
                found = found._replace(**{ancestor.tag: ancestor})
            self.within[ancestor] = found
        return found


def _figcaption(img: lxml.html.HtmlElement, ancestry: _Ancestry | None = None) -> str | None:
    """The caption of the image's figure: the nearest ``<figure>`` around it, and that figure's own
    ``<figcaption>`` (a child of it, as the HTML standard places it), never one of a figure nested in it.
    ``ancestry`` is the page's: a figure's caption is read once, not again for each of its images."""
    ancestry = ancestry or _Ancestry()
    figure = ancestry.around(img).figure
    if figure is None:
        return None
    if figure not in ancestry.captions:
        caption = figure.find("figcaption")
        ancestry.captions[figure] = None if caption is None else normalize_text(_rendered_text(caption)) or None
    return ancestry.captions[figure]


def _inherited_title(img: lxml.html.HtmlElement, ancestry: _Ancestry | None = None) -> str | None:
    """The title of the nearest ancestor that has one (``<a title=...>`` around a gallery's thumbnail): the
    HTML standard's advisory title of an element without its own, which browsers show over the image.
    ``ancestry`` is the page's: the walk up stops at an ancestor already worked out, so each ancestor is visited
    and each title read once a page, however many images share them."""
    ancestry = ancestry or _Ancestry()
    passed, title = [], None
    ancestor = img.getparent()
    while ancestor is not None:
        if ancestor in ancestry.titles:
            title = ancestry.titles[ancestor]
            break
        passed.append(ancestor)
        if ancestor.get("title") is not None:
            title = normalize_text(ancestor.get("title")) or None
            break
        ancestor = ancestor.getparent()
    for element in passed:
        ancestry.titles[element] = title
    return title


#: A ``</body>`` or ``</html>`` end tag, any case (``</HTML >`` too).
_END_OF_DOCUMENT = re.compile(r"</(?:body|html)\s*>", re.IGNORECASE)


def _without_end_tags(text: str) -> str:
    """The page without its ``</body>`` and ``</html>`` end tags, which libxml2 takes as the end of the page: what
    follows ``</html>`` (a host's appended banner, a tracking pixel, markup pasted after the end) was dropped without
    a word, where a browser reads it into the body (the HTML standard's "after after body" mode). Without the end
    tags libxml2 puts it in the body too; the ``<body>`` and ``<html>`` elements are still made.

    One that stands inside a tag (``alt="a </html> b"``: a ``<`` after the last ``>`` before it) is text and stays.
    Each look back ends at the ``>`` of the end tag before it at the latest, so a page of many costs one pass.
    """
    def drop(match: re.Match) -> str:
        inside_a_tag = text.rfind("<", 0, match.start()) > text.rfind(">", 0, match.start())
        return match.group(0) if inside_a_tag else ""

    return _END_OF_DOCUMENT.sub(drop, text)


def _parse_document(text: str) -> tuple[lxml.html.HtmlElement, bool]:
    """The page's tree, and whether libxml2 stopped reading it at its nesting limit.

    ``huge_tree`` lifts libxml2's nesting limit from 256 to 2048 levels (the page size cap bounds the
    memory); deeper than that it stops reading, and the rest of the page is lost. An empty document is an
    empty page; any other failure is the caller's ``parse_error``. Content after ``</html>`` is read, as
    browsers read it (``_without_end_tags``).
    """
    # lxml refuses str input carrying an XML encoding declaration; hand it UTF-8 bytes instead (a lone
    # surrogate from a str caller becomes "?": it cannot be UTF-8). The end tags go from the decoded text, so
    # no encoding (UTF-16, EBCDIC, ...) hides them.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, huge_tree=True)
    try:
        doc = lxml.html.document_fromstring(_without_end_tags(text).encode("utf-8", errors="replace"), parser=parser)
    except lxml.etree.ParserError:  # "Document is empty": nothing but blanks or comments
        return lxml.html.document_fromstring(b"<html><body></body></html>", parser=parser), False
    truncated = any(error.type == lxml.etree.ErrorTypes.ERR_RESOURCE_LIMIT for error in parser.error_log)
    return doc, truncated


def parse_page(html: bytes | str, page_url: str, headers: Mapping | None = None,
               formats: Iterable[str] = DEFAULT_FORMATS) -> Page:
    """Everything the crawl needs from one HTML page: candidates, rejected references, links, metadata.

    ``formats`` (Pillow names) are the image formats the crawl keeps: a ``<picture>`` source typed as
    another format is passed over for the next one or the ``<img>`` itself.
    """
    text = html if isinstance(html, str) else decode_html(html, headers)
    doc, truncated = _parse_document(text)
    page = Page(url=page_url)
    if truncated:  # the references past that point are lost: counted, as the stats must show it
        logger.warning("%s nests deeper than libxml2's limit of 2048 elements: the rest of it is not read", page_url)
        page.counts["page/truncated_too_deep"] += 1
    page.lang = normalize_text(doc.get("lang") or doc.get("{http://www.w3.org/XML/1998/namespace}lang")) or None
    if not page.lang:
        page.lang = normalize_text((header_value(headers, "Content-Language") or "").split(",")[0]) or None
    # The document's title is its first <title> not of an inline <svg> (which titles its drawing): a browser's too.
    title = next(iter(doc.xpath("//title[not(ancestor::svg)]")), None)
    page.title = normalize_text(title.text_content()) if title is not None else None
    page.title = page.title or None
    page.text = (normalize_text(" ".join(_visible_text(doc))) or "")[:PAGE_TEXT_CHARS] or None

    base_url = page_url
    base = doc.find(".//base[@href]")
    if base is not None and base.get("href", "").strip():
        try:
            base_url = resolve_url(page_url, base.get("href").strip())
            if urlsplit(base_url).scheme in ("data", "javascript"):
                raise ValueError("a data: or javascript: base")
        except ValueError:  # a browser ignores a base it cannot parse, or of these schemes (HTML standard)
            base_url = page_url
            page.counts["invalid_base"] += 1

    directives = [m.get("content", "") for m in doc.iter("meta") if (m.get("name") or "").lower() in ROBOTS_META_NAMES]
    robots_tag = next((v for k, v in (headers or {}).items() if _header_text(k).lower() == "x-robots-tag"), None)
    if isinstance(robots_tag, (list, tuple)):
        # The response's lines told apart (the spider's getlist): each read whole, its user agent scoping it.
        page.opt_out = opt_out_reason(directives, lines=robots_tag_lines(headers))
    else:  # one value, maybe several lines joined (crawler.fetch.header_dict): read rule by rule, as it always was
        page.opt_out = opt_out_reason(directives + [header_value(headers, "X-Robots-Tag") or ""])
    page.nofollow = any("nofollow" in d.lower() or "none" == d.strip().lower() for d in directives)
    if page.opt_out:
        page.counts[f"page/{page.opt_out}"] += 1

    page.refresh = _meta_refresh(doc, base_url, page)

    ancestry = _Ancestry()  # what the links and images take from their ancestors, worked out once an element
    seen_links = set()
    for anchor in doc.iter("a", "area"):
        href = (anchor.get("href") or "").strip()
        if not href:
            continue
        if ancestry.around(anchor).template is not None:
            # Inert markup, as a <template>'s <img> (below): no link of the page until a script clones it, often
            # with its placeholders filled (`<a href="{{url}}">`). Not followed: counted apart.
            page.counts["link_in_template"] += 1
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
    # (url_key, alt, title) -> the image URL as the page first writes it with that text: `größe.jpg`,
    # `gr%C3%B6%C3%9Fe.jpg` and `gr%c3%b6%c3%9fe.jpg` are one image, and a later reference that spells it otherwise
    # with the same text repeats the first one (its id); any other reference keeps the id it always had.
    spelling_of: dict[tuple, str] = {}
    allowed_formats = frozenset(f.upper() for f in formats)
    for img in doc.iter("img"):
        if ancestry.around(img).template is not None:
            # A <template>'s content is inert: never shown nor fetched until a script clones it, and then often with
            # its placeholders filled (`<img src="{{url}}">`). No reference of the page, so no row: counted apart.
            page.counts["img_in_template"] += 1
            continue
        page.counts["img"] += 1
        raw = _image_source(img, allowed_formats, ancestry)
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
        figcaption = _figcaption(img, ancestry)
        if not alt and not title_text and not figcaption:
            if img.get("title") is None:  # (a title="" of its own says the image has none)
                ref["title"] = title_text = _inherited_title(img, ancestry)
            if not title_text:
                _reject(page, ref, "no_text")
                continue
        candidate = dict(ref, figcaption=figcaption, page_lang=page.lang, page_title=page.title, page_text=page.text)
        first_spelling = spelling_of.setdefault((url_key(image_url), alt, title_text), image_url)
        key = candidate_id(page_url, first_spelling, alt, title_text)
        if figcaption_of.setdefault(key, figcaption) != figcaption:  # same image and alt/title, another caption
            key = candidate_id(page_url, first_spelling, alt, title_text, figcaption or NO_FIGCAPTION)
        candidate["candidate_id"] = key
        page.candidates.append(candidate)
        page.counts["candidate"] += 1
    return page


#: ``<meta http-equiv="refresh">`` content as the HTML standard reads it: whole seconds (a fraction is read and
#: dropped), then, after ``;``, ``,`` or whitespace, the URL, optionally after ``url=`` and in quotes.
_REFRESH = re.compile(r"\s*(\d*)([\d.]*)(?:$|[;,\s]\s*[;,]?\s*(?:url\s*=\s*)?(.*))", re.IGNORECASE | re.DOTALL)


def _meta_refresh(doc: lxml.html.HtmlElement, base_url: str, page: Page) -> tuple[int, str] | None:
    """(delay, URL) of the page's first ``<meta http-equiv="refresh">`` that names another http(s) URL to move to, as
    a browser takes the first one; None when there is none (a refresh without a URL reloads the page itself).

    One inside ``<noscript>`` or ``<script>`` is left alone, as Scrapy's meta-refresh redirect left it (a script page's
    "please enable JavaScript" fallback), and so is one inside a ``<template>`` (inert markup, as its links are).
    A URL that does not parse counts as ``invalid_link``.
    """
    for meta in doc.iter("meta"):
        if (meta.get("http-equiv") or "").strip().lower() != "refresh":
            continue
        if any(True for _ in meta.iterancestors("noscript", "script", "template")):
            continue
        match = _REFRESH.match(meta.get("content") or "")
        if not match or not (match.group(1) or match.group(2)):
            continue  # no delay: the browser ignores it and takes the next one
        target = (match.group(3) or "").strip()
        if target[:1] in ("'", '"'):
            target = target[1:].split(target[0], 1)[0].strip()
        if not target:
            return None  # a reload of the page itself (every N seconds): nothing to follow
        try:
            url = resolve_url(base_url, target)
        except ValueError:
            page.counts["invalid_link"] += 1
            return None
        return (int(match.group(1) or 0), url) if urlsplit(url).scheme in ("http", "https") else None
    return None


def _reject(page: Page, ref: dict, reason: str, detail: str | None = None) -> None:
    row = dict(ref, reason=reason, detail=detail)
    if ref.get("image_url"):
        row["candidate_id"] = candidate_id(ref["page_url"], ref["image_url"], ref.get("alt"), ref.get("title"))
    page.rejects.append(row)
    page.counts[reason] += 1


def extract_candidates(html: bytes | str, page_url: str, headers: Mapping | None = None,
                       formats: Iterable[str] = DEFAULT_FORMATS) -> tuple[list[dict], collections.Counter]:
    """The (page, image, text) candidates of one HTML page and the counts of what was found and skipped."""
    page = parse_page(html, page_url, headers, formats)
    return page.candidates, page.counts
