"""The (image, ALT/TITLE text) extraction audited on the HTML patterns of real pages (the rules: docs/crawl.md, "How
it works", Extraction): a table of cases through ``crawler.extract.parse_page``, the defects it found, and one crawl of
the mock site for what only the spider decides (robots directives, the image's own X-Robots-Tag)."""
import collections
import json
from urllib.parse import urljoin

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse, Response

import schemas
from crawler import extract
from crawler.spiders import lait as spider_module
from tests.crawler.mocksite import GIF_PIXEL, HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import path_of
from tests.crawler.test_crawl_units import _spider
from tests.inprocess import lait_crawl_here

PAGE = "http://example.org/dir/page.html"
SVG_PLACEHOLDER = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 8 6'%3E%3C/svg%3E"


def url(reference: str) -> str:
    return urljoin(PAGE, reference)


def kept(page: extract.Page) -> list[tuple]:
    return [(c["image_url"], c["alt"], c["title"]) for c in page.candidates]


def rejected(page: extract.Page) -> list[tuple]:
    return [(r["reason"], r["image_url"]) for r in page.rejects]


#: (case, HTML, candidates as (image URL, alt, title), rejects as (reason, image URL)).
CASES = [
    # URLs
    ("relative", '<img src="../a.jpg" alt="A">', [(url("../a.jpg"), "A", None)], []),
    ("base_href", '<head><base href="https://cdn.example/i/"></head><img src="a.jpg" alt="A">',
     [("https://cdn.example/i/a.jpg", "A", None)], []),
    ("base_relative_and_late", '<img src="a.jpg" alt="A"><base href="/x/">', [(url("/x/a.jpg"), "A", None)], []),
    ("base_first_of_two", '<head><base target="_top"><base href="/x/"><base href="/y/"></head><img src="a.jpg" alt="A">',
     [(url("/x/a.jpg"), "A", None)], []),
    ("base_javascript_ignored", '<head><base href="javascript:void(0)"></head><img src="a.jpg" alt="A">',
     [(url("a.jpg"), "A", None)], []),
    ("src_newline_and_spaces", '<img src="  a\nb.jpg " alt="A">', [(url("ab.jpg"), "A", None)], []),
    # srcset and <picture>: the largest candidate
    ("srcset_width", '<img src="s.jpg" srcset="s.jpg 320w, l.jpg 1600w, m.jpg 800w" sizes="50vw" alt="A">',
     [(url("l.jpg"), "A", None)], []),
    ("srcset_density", '<img src="s.jpg" srcset="l.jpg 2x, m.jpg 1.5x" alt="A">', [(url("l.jpg"), "A", None)], []),
    ("picture_sources", '<picture><source media="(min-width: 800px)" srcset="p.jpg 480w, q.jpg 1200w">'
                        '<source srcset="r.jpg 2000w"><img src="f.jpg" alt="A"></picture>', [(url("r.jpg"), "A", None)], []),
    # lazy loading
    ("lazy_data_src", f'<img src="{GIF_PIXEL}" data-src="l.jpg" loading="lazy" alt="A">', [(url("l.jpg"), "A", None)], []),
    ("lazy_data_srcset", f'<img src="{GIF_PIXEL}" srcset="{SVG_PLACEHOLDER}" data-srcset="a.jpg 1x, b.jpg 2x" alt="A">',
     [(url("b.jpg"), "A", None)], []),
    ("lazy_data_original", '<img src="/blank.gif" data-original="o.jpg" alt="A">', [(url("o.jpg"), "A", None)], []),
    ("lazy_wordpress", f'<img src="{SVG_PLACEHOLDER}" data-lazy-src="w-300.jpg" '
                       'data-lazy-srcset="w-300.jpg 300w, w-1024.jpg 1024w" alt="A">', [(url("w-1024.jpg"), "A", None)], []),
    ("lazy_native", '<img loading="lazy" src="real.jpg" alt="A">', [(url("real.jpg"), "A", None)], []),
    ("lazy_placeholder_only", f'<img loading="lazy" src="{GIF_PIXEL}" alt="A">', [], [("data_uri", None)]),
    ("lazy_placeholder_in_data_src", f'<img src="real.jpg" data-src="{GIF_PIXEL}" alt="A">', [(url("real.jpg"), "A", None)], []),
    # URLs that are never fetched
    ("data_uri", '<img src="DATA:image/png;base64,iVBORw0KGgo=" alt="A">', [], [("data_uri", None)]),
    ("blob", '<img src="blob:http://example.org/0b1c" alt="A">', [], [("unsupported_scheme", "blob:http://example.org/0b1c")]),
    ("javascript", '<img src="JavaScript:void(0)" alt="A">', [], [("unsupported_scheme", "javascript:void(0)")]),
    ("no_src", '<img alt="A"><img src="" alt="B"><img src="  " data-src="" alt="C">', [], [("no_image_url", None)] * 3),
    # alt and title
    ("alt_and_title", '<img src="a.jpg" alt="Alt" title="Title">', [(url("a.jpg"), "Alt", "Title")], []),
    ("title_only", '<img src="a.jpg" title="Title">', [(url("a.jpg"), None, "Title")], []),
    ("decorative_with_title", '<img src="a.jpg" alt="" title="Title">', [], [("decorative_image", url("a.jpg"))]),
    ("both_empty", '<img src="a.jpg" alt="" title="">', [], [("decorative_image", url("a.jpg"))]),
    ("blank_alt", '<img src="a.jpg" alt=" &nbsp;\n ">', [], [("decorative_image", url("a.jpg"))]),
    ("invisible_alt", '<img src="a.jpg" alt="&#8203;&#x200E;">', [], [("decorative_image", url("a.jpg"))]),
    ("no_text", '<img src="a.jpg">', [], [("no_text", url("a.jpg"))]),
    ("whitespace_and_entities", '<img src="a.jpg" alt="  Fish &amp;\n\t chips&nbsp;&eacute;  &lt;b&gt; ">',
     [(url("a.jpg"), "Fish & chips é <b>", None)], []),
    ("control_characters", '<img src="a.jpg" alt="Red\x01 door\x7f">', [(url("a.jpg"), "Red door", None)], []),
    ("uppercase", '<IMG SRC="Pics/A.JPG" ALT="Upper" TITLE="T">', [(url("Pics/A.JPG"), "Upper", "T")], []),
    # the image's context
    ("same_image_two_alts", '<img src="a.jpg" alt="One"><img src="a.jpg" alt="Two">',
     [(url("a.jpg"), "One", None), (url("a.jpg"), "Two", None)], []),
    ("link_title", '<a href="big.jpg" title="Sunset over the bay"><img src="t.jpg"></a>',
     [(url("t.jpg"), None, "Sunset over the bay")], []),
    ("link_title_not_over_alt", '<a href="big.jpg" title="Open"><img src="t.jpg" alt="A"></a>', [(url("t.jpg"), "A", None)], []),
    ("link_title_not_over_empty_title", '<a title="Open"><img src="t.jpg" title=""></a>', [], [("no_text", url("t.jpg"))]),
    ("link_title_not_over_decorative", '<a title="Open"><img src="t.jpg" alt=""></a>', [], [("decorative_image", url("t.jpg"))]),
    ("noscript_fallback", f'<img src="{GIF_PIXEL}" data-src="l.jpg" alt="A"><noscript><img src="l.jpg" alt="A"></noscript>',
     [(url("l.jpg"), "A", None)] * 2, []),
    ("noscript_only", '<noscript><img src="n.jpg" alt="N"></noscript>', [(url("n.jpg"), "N", None)], []),
    # malformed markup
    ("unquoted_and_unclosed", '<div><p><img src=a.jpg alt=Unquoted text><table><tr><td><img src="b.jpg" alt="B"></div>',
     [(url("a.jpg"), "Unquoted", None), (url("b.jpg"), "B", None)], []),
    ("unterminated_last_tag", '<img src="a.jpg" alt="A"><img src="b.jpg" alt="B"', [(url("a.jpg"), "A", None)], []),
]


@pytest.mark.parametrize("case, markup, candidates, rejects", CASES, ids=[c[0] for c in CASES])
def test_extraction_of_real_world_patterns(case, markup, candidates, rejects):
    page = extract.parse_page(markup, PAGE)
    assert kept(page) == candidates
    assert rejected(page) == rejects
    assert page.counts["img"] == len(candidates) + len(rejects)  # every <img> is a row


def test_the_largest_srcset_candidate_wins_as_the_best_bet_for_the_minimum_side():
    """`w` is the width the file has: the largest is the one most likely to have a short side of 300 px or more
    (a 1600w landscape photo at 3:1 still does, a 320w one never), and the filter stage sizes nothing up."""
    page = extract.parse_page('<img srcset="a-320.jpg 320w, a-640.jpg 640w, a-1600.jpg 1600w" src="a.jpg" alt="A">', PAGE)
    assert kept(page) == [(url("a-1600.jpg"), "A", None)]


def test_a_repeated_reference_keeps_its_id_so_the_output_makes_it_a_duplicate():
    page = extract.parse_page('<img src="a.jpg" alt="A"><noscript><img src="a.jpg" alt="A"></noscript>'
                              '<img src="a.jpg" alt="B">', PAGE)
    ids = [c["candidate_id"] for c in page.candidates]
    assert ids[0] == ids[1] != ids[2]


def test_a_very_long_alt_is_kept_whole_for_the_filter_to_judge():
    alt = "word " * 5000
    page = extract.parse_page(f'<img src="a.jpg" alt="{alt}">', PAGE)
    assert page.candidates[0]["alt"] == alt.strip()


# -- defects found, each fixed ------------------------------------------------------------------------------------


def test_a_data_uri_placeholder_in_a_lazy_attribute_does_not_hide_the_real_src():
    """Was: `data-src="data:..."` beat `src="real.jpg"`, and the reference became a `data_uri` reject."""
    page = extract.parse_page(f'<img src="real.jpg" data-src="{GIF_PIXEL}" alt="A">'
                              f'<img srcset="{GIF_PIXEL} 2x" data-original="o.jpg" alt="B">', PAGE)
    assert kept(page) == [(url("real.jpg"), "A", None), (url("o.jpg"), "B", None)] and page.rejects == []


def test_wordpress_lazy_srcset_gives_its_largest_candidate():
    """Was: `data-lazy-srcset` (WP Rocket, Jetpack) was not read, and the small `data-lazy-src` was taken."""
    page = extract.parse_page(f'<img src="{SVG_PLACEHOLDER}" data-lazy-src="w-300.jpg" '
                              'data-lazy-srcset="w-300.jpg 300w, w-1024.jpg 1024w" alt="A">', PAGE)
    assert kept(page) == [(url("w-1024.jpg"), "A", None)]


def test_an_alt_of_invisible_characters_is_decorative_and_control_characters_are_dropped():
    """Was: `alt="&#8203;"` (a zero-width space) became a candidate with an invisible caption, fetched for
    nothing, and control characters stayed in the text."""
    page = extract.parse_page('<img src="z.jpg" alt="&#8203;"><img src="c.jpg" alt="a\x01b\x07 c">'
                              '<figure><img src="f.jpg" alt="F"><figcaption>Cap\x02tion</figcaption></figure>', PAGE)
    assert rejected(page) == [("decorative_image", url("z.jpg"))]
    assert [(c["alt"], c["figcaption"]) for c in page.candidates] == [("ab c", None), ("F", "Caption")]
    assert extract.normalize_text("\u200b \ufeff") == "" and extract.normalize_text("a\u200bb") == "a\u200bb"


def test_an_image_without_text_takes_the_title_of_its_link():
    """Was: a gallery thumbnail whose caption is on its link (`<a title="...">`, which browsers show over the
    image) was a `no_text` reject. Only the nearest title counts, and only when the image has no text at all."""
    page = extract.parse_page('<div title="Gallery"><a href="big.jpg" title="Sunset over the bay"><img src="t.jpg"></a>'
                              '<span><img src="u.jpg"></span></div>', PAGE)
    assert kept(page) == [(url("t.jpg"), None, "Sunset over the bay"), (url("u.jpg"), None, "Gallery")]
    assert page.candidates[0]["candidate_id"] == extract.candidate_id(PAGE, url("t.jpg"), None, "Sunset over the bay")


def test_a_data_or_javascript_base_is_ignored_as_browsers_ignore_it():
    """Was: every image of the page resolved against `<base href="data:...">` to a bare `a.jpg`, an
    `unsupported_scheme` reject."""
    for base in ("data:text/html,x", "javascript:void(0)"):
        page = extract.parse_page(f'<head><base href="{base}"></head><img src="a.jpg" alt="A"><a href="/next">n</a>', PAGE)
        assert kept(page) == [(url("a.jpg"), "A", None)]
        assert page.links == [url("/next")] and page.counts["invalid_base"] == 1


def late_meta_page(alt: str, encoding: str) -> bytes:
    """A page whose only charset declaration follows 6 KB of inline style in its head."""
    style = "<style>" + "p { margin: 0 }\n" * 400 + "</style>"
    return (f'<html><head>{style}<meta charset="{encoding}"><title>{alt}</title></head>'
            f'<body><img src="a.jpg" alt="{alt}"></body></html>').encode(encoding)


@pytest.mark.parametrize("alt, encoding", [("赤い四角の写真", "shift_jis"), ("Café crème – 5 €", "windows-1252")],
                         ids=["shift_jis", "windows-1252"])
def test_a_meta_charset_after_a_long_head_decodes_the_page(alt, encoding):
    """Was: w3lib reads a `<meta charset>` in the first 4,096 bytes only; after a long inline style, the page
    decoded as Windows-1252 and the alt text was mojibake."""
    page = extract.parse_page(late_meta_page(alt, encoding), PAGE, {"Content-Type": "text/html"})
    assert [c["alt"] for c in page.candidates] == [alt] and page.title == alt
    # A <meta> after <body> does not count (browsers ignore it too), and a header wins over a late <meta>.
    after_body = b"<html><head></head><body>" + b" " * 5000 + '<meta charset="shift_jis"><img src=a.jpg alt="é">'.encode("cp1252")
    assert extract.parse_page(after_body, PAGE).candidates[0]["alt"] == "é"
    header = extract.parse_page(late_meta_page("Café", "cp1252").replace(b"cp1252", b"koi8-r"), PAGE,
                                {"Content-Type": "text/html; charset=windows-1252"})
    assert header.candidates[0]["alt"] == "Café"


@pytest.mark.parametrize("body, headers, alt", [
    ('<meta charset="windows-1252"><img src=a.jpg alt="Café – 5 €">'.encode("cp1252"), {}, "Café – 5 €"),
    ('<img src=a.jpg alt="Café – 5 €">'.encode("cp1252"), {"Content-Type": "text/html; charset=ISO-8859-1"}, "Café – 5 €"),
    ('<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"><img src=a.jpg alt="赤い四角">'.encode("shift_jis"),
     {}, "赤い四角"),
    ('<img src=a.jpg alt="赤い四角">'.encode("shift_jis"), {b"Content-Type": [b"text/html; charset=Shift_JIS"]}, "赤い四角"),
    ('<meta charset="windows-1252"><img src=a.jpg alt="赤い四角">'.encode("shift_jis"),
     {"Content-Type": "text/html; charset=shift_jis"}, "赤い四角"),  # the header wins over the <meta>
], ids=["meta_cp1252", "header_latin1_is_cp1252", "http_equiv_sjis", "header_sjis", "header_over_meta"])
def test_a_charset_declared_in_the_meta_or_only_in_the_header_decodes_the_alt(body, headers, alt):
    assert [c["alt"] for c in extract.parse_page(body, PAGE, headers).candidates] == [alt]


@pytest.mark.parametrize("content, opt_out, nofollow", [
    ("noimageindex", "opt_out_noimageindex", False),
    ("NOINDEX, NOIMAGEINDEX", "opt_out_noimageindex", False),
    ("noindex", None, False),  # about the page, not its images (search engines still index them)
    ("none", None, True),
    ("noai", "opt_out_noai", False),
])
def test_meta_robots_of_the_page(content, opt_out, nofollow):
    page = extract.parse_page(f'<meta name="ROBOTS" content="{content}"><img src="a.jpg" alt="A"><a href="/n">n</a>', PAGE)
    assert (page.opt_out, page.nofollow) == (opt_out, nofollow)
    assert extract.parse_page(f'<meta name="googlebot" content="{content}"><img src="a.jpg" alt="A">', PAGE).opt_out is None


def test_noindex_on_an_image_response_opts_the_image_out():
    """Was: an image served with `X-Robots-Tag: noindex` (search engines' documented way to keep an image out of
    image search) was kept. A page's own noindex still says nothing about its images."""
    assert extract.opt_out_reason(["noindex"], image=True) == "opt_out_noindex"
    assert extract.opt_out_reason(["none"], image=True) == "opt_out_noindex"
    assert extract.opt_out_reason(["noindex, noai"], image=True) == "opt_out_noai"
    assert extract.opt_out_reason(["googlebot: noindex"], image=True) is None
    assert extract.opt_out_reason(["noindex"]) is None
    spider = _spider(LAIT_MIN_SIDE=TEST_MIN_SIDE)
    image_url = "http://example.org/a.jpg"
    candidate = {"page_url": PAGE, "image_url": image_url, "alt": "A", "title": None, "candidate_id": "c"}
    assert next(spider._candidate(candidate)).url == image_url
    response = Response(image_url, headers={"Content-Type": "image/jpeg", "X-Robots-Tag": "noindex"}, body=jpeg(96, 72),
                        request=Request(image_url, meta={"lait_image": image_url}))
    rows = [item.row for item in spider.parse_image(response)]
    assert [(row["reason"], row["candidate_id"]) for row in rows] == [("opt_out_noindex", "c")]


@pytest.mark.parametrize("lines, opt_out", [
    (["otherbot: noindex, noai"], None),  # was opt_out_noai: the name scopes the whole line, not its first rule
    (["otherbot: noindex", "noai"], "opt_out_noai"),  # a line without a name is every agent's
    (["googlebot: noai", "LAIT: noimageai"], "opt_out_noimageai"),
    (["lait: noindex, noimageindex"], "opt_out_noimageindex"),
    (["* : noai"], "opt_out_noai"),
    (["noindex, otherbot: noai"], None),  # a name after a rule scopes that rule (as before)
    # a rule with a value after a colon names no user agent: the line is every agent's
    (["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "opt_out_noai"),
    (["Unavailable_After: Friday, 25-Jun-2010 15:00:00 PST, noimageai"], "opt_out_noimageai"),
    (["max-image-preview: large, noimageindex"], "opt_out_noimageindex"),
    (["lait: unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "opt_out_noai"),
    (["googlebot: unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], None),
])
def test_a_user_agent_before_an_x_robots_tag_line_scopes_the_whole_line(lines, opt_out):
    """Was: the lines were joined by `, ` and a name scoped only the rule after it, so `otherbot: noindex, noai`
    opted the page out for LAIT too. Google reads the name as the user agent of every rule of its line."""
    assert extract.opt_out_reason([], lines=lines) == opt_out
    for headers in ({"X-Robots-Tag": lines}, {b"x-robots-tag": [line.encode("latin-1") for line in lines]}):
        assert extract.parse_page('<img src="a.jpg" alt="A">', PAGE, headers).opt_out == opt_out


def test_x_robots_tag_lines_are_read_apart_only_where_they_come_apart():
    pairs = [("X-Robots-Tag", "otherbot: noai"), ("Content-Type", "text/html"), ("x-robots-tag", "noimageai")]
    assert extract.robots_tag_lines(pairs) == ["otherbot: noai", "noimageai"]
    assert extract.robots_tag_lines({"X-Robots-Tag": "one line"}) == ["one line"]
    assert extract.robots_tag_lines(None) == extract.robots_tag_lines({}) == []
    assert extract.robots_tag_lines(Response(PAGE, headers=[(b"X-Robots-Tag", b"a: b"), (b"X-Robots-Tag", b"c")]).headers) == [
        "a: b", "c"]
    # One value may be lines joined (crawler.fetch.header_dict, as the WARC reader hands them): read rule by rule, as
    # it always was, so an opt-out on a line of its own after another agent's line still counts.
    joined = {"x-robots-tag": "otherbot: noindex, noai"}
    assert extract.parse_page('<img src="a.jpg" alt="A">', PAGE, joined).opt_out == "opt_out_noai"
    assert extract.opt_out_reason(["otherbot: noindex, noai"]) == "opt_out_noai"
    assert extract.opt_out_reason(["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"]) == "opt_out_noai"


@pytest.mark.parametrize("lines, reason", [(["otherbot: noindex, noimageai"], None),
                                           (["otherbot: noindex", "noimageai"], "opt_out_noimageai"),
                                           (["lait: noindex"], "opt_out_noindex")])
def test_the_spider_reads_each_x_robots_tag_line_of_a_page_and_an_image_whole(lines, reason):
    spider = _spider(LAIT_MIN_SIDE=TEST_MIN_SIDE)
    page_url, image_url = "http://example.org/", "http://example.org/a.jpg"
    headers = [(b"Content-Type", b"text/html")] + [(b"X-Robots-Tag", line.encode()) for line in lines]
    request = spider._schedule_page(page_url, 0)
    page = HtmlResponse(page_url, headers=headers, body=html('<img src="/a.jpg" alt="A">'), request=request)
    out = list(spider.parse_page(page))
    page_reason = reason if reason != "opt_out_noindex" else None  # a page's noindex is about the page
    if page_reason:
        assert [item.row["reason"] for item in out] == [page_reason]
    else:
        assert [item.url for item in out] == [image_url]
    headers = [(b"Content-Type", b"image/jpeg")] + [(b"X-Robots-Tag", line.encode()) for line in lines]
    spider.pending[image_url] = [{"page_url": page_url, "image_url": image_url, "alt": "A", "title": None,
                                  "candidate_id": "c"}]
    image = Response(image_url, headers=headers, body=jpeg(96, 72), request=Request(image_url, meta={"lait_image": image_url}))
    rows = [item.row for item in spider.parse_image(image)]
    assert [row.get("reason") for row in rows] == [reason]


@pytest.mark.parametrize("name, value", [("LAIT_MIN_SIDE", True), ("LAIT_MAX_ASPECT", True), ("LAIT_ROWS_PER_SHARD", True),
                                         ("LAIT_LIVE_COUNTS_INTERVAL", False)])
def test_a_bool_for_a_numeric_setting_is_refused_in_one_line(name, value):
    """Was: a settings file's `LAIT_MIN_SIDE = True` read as 1 (Scrapy's getint), where the text "true" is refused."""
    with pytest.raises(ValueError) as refused:
        spider_module.check_value(name, value)
    assert str(refused.value).startswith(f"{name} must be ") and str(refused.value).endswith(f"got {value!r}")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="^LAIT_MIN_SIDE must be a whole number"):
        _spider(LAIT_MIN_SIDE=True)  # the native spider, at init
    spider_module.check_value("LAIT_PROGRESS", True)  # a switch takes a bool


# -- the spider on the mock site --------------------------------------------------------------------------------


def robots_site() -> MockSite:
    site = MockSite({})
    pages = {
        "/gallery.html": html(f'<a href="/img/big.jpg" title="Sunset over the bay"><img src="/img/thumb.jpg"></a>'
                              f'<img src="/img/lazy.jpg" data-src="{GIF_PIXEL}" alt="Lazy">'
                              '<img src="/img/shown-twice.jpg" alt="First text"><img src="/img/shown-twice.jpg" alt="Other text">'
                              '<img src="/img/noindex.jpg" alt="Image says noindex">'),
        "/noimageindex.html": html('<img src="/img/hidden.jpg" alt="Hidden">',
                                   head='<meta name="robots" content="noimageindex">'),
        "/noindex.html": html('<img src="/img/listed.jpg" alt="Page says noindex">', head='<meta name="robots" content="noindex">'),
    }
    site.pages.update({path: (200, HTML, body) for path, body in pages.items()})
    site.pages["/late-meta.html"] = (200, {"Content-Type": "text/html"}, late_meta_page("赤い四角の写真", "shift_jis"))
    site.pages["/"] = (200, HTML, html("".join(f'<a href="{path}">{path}</a>' for path in [*pages, "/late-meta.html"])))
    site.pages["/robots.txt"] = (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")
    for name in ("thumb", "big", "lazy", "shown-twice", "hidden", "listed"):
        site.pages[f"/img/{name}.jpg"] = (200, JPEG, jpeg(96, 72))
    site.pages["/img/noindex.jpg"] = (200, dict(JPEG, **{"X-Robots-Tag": "noindex"}), jpeg(96, 72))
    site.pages["/a.jpg"] = (200, JPEG, jpeg(96, 72))
    return site


def test_the_spider_on_lazy_linked_repeated_and_opted_out_images(tmp_path):
    out = tmp_path / "crawl"
    with robots_site() as site:
        lait_crawl_here(site.url + "/", "--out", str(out), "--allow-private-networks", "--min-side", str(TEST_MIN_SIDE),
                        settings=TEST_SETTINGS)
        counts = collections.Counter(site.counts)
    candidates = schemas.read_table(str(out / "candidates"), "candidates").to_pylist()
    rows = schemas.read_table(str(out / "rejected"), "rejected").to_pylist()
    found = sorted((path_of(c["page_url"], site), path_of(c["image_url"], site), c["alt"], c["title"]) for c in candidates)
    assert found == [("/gallery.html", "/img/lazy.jpg", "Lazy", None),
                     ("/gallery.html", "/img/shown-twice.jpg", "First text", None),
                     ("/gallery.html", "/img/shown-twice.jpg", "Other text", None),
                     ("/gallery.html", "/img/thumb.jpg", None, "Sunset over the bay"),
                     ("/late-meta.html", "/a.jpg", "赤い四角の写真", None),
                     ("/noindex.html", "/img/listed.jpg", "Page says noindex", None)]
    assert sorted((path_of(r["page_url"], site), path_of(r["image_url"], site) or "", r["reason"]) for r in rows) == [
        ("/gallery.html", "/img/noindex.jpg", "opt_out_noindex"),
        ("/img/big.jpg", "", "not_html"),  # the link's target, followed as a page (it is no <img> of the page)
        ("/noimageindex.html", "/img/hidden.jpg", "opt_out_noimageindex")]
    # Each image fetched once; the one of a noimageindex page never; the noindex image's header arrives with it.
    assert counts["/img/shown-twice.jpg"] == 1 and counts["/img/hidden.jpg"] == 0 and counts["/img/noindex.jpg"] == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["lait/image/rejected/opt_out_noindex"] == 1 and stats["lait/page/opt_out_noimageindex"] == 1
