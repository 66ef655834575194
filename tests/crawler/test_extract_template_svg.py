"""Two crawl fixes: an ``<img>`` inside a ``<template>`` (inert markup a script clones, such as
``<img src="{{url}}">``) is no reference of the page, and an SVG served for an ``<img>`` is ``format_not_allowed``
(a format LAIT does not open), not ``image_decode_error``, in the crawl as in the filter stage."""
import gzip

import pytest

from crawler import extract, images
from filters import imageio
from filters.image import ImageFilter

PAGE = "http://example.org/dir/page.html"


# -- <img> inside <template> ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("markup", [
    '<template><img src="{{url}}" alt="{{alt}}"></template>',
    '<template><div><figure><img src="t.jpg" alt="Deep"><figcaption>c</figcaption></figure></div></template>',
    '<template><template><img src="t.jpg" alt="Nested"></template></template>',
    '<template><picture><source srcset="big.jpg 2x"><img src="t.jpg" alt="Pic"></picture></template>',
    '<template><img src="data:image/gif;base64,R0lGOD" alt="placeholder"></template>',
    '<template><img src="t.jpg" alt=""></template>',  # not even a decorative_image row
])
def test_an_img_inside_a_template_is_no_candidate_and_no_reject(markup):
    page = extract.parse_page(f'<html><body>{markup}<img src="real.jpg" alt="Real"></body></html>', PAGE)
    assert [c["image_url"] for c in page.candidates] == ["http://example.org/dir/real.jpg"]
    assert page.rejects == []
    # counted apart (lait/ref/img_in_template), not as an <img> of the page: every <img> counted is still a row
    assert page.counts["img_in_template"] == 1
    assert page.counts["img"] == len(page.candidates) + len(page.rejects) == 1


def test_a_template_in_the_head_and_extract_candidates_agree():
    html = b'<html><head><template><img src="h.jpg" alt="H"></template></head><body><p>x</p></body></html>'
    page = extract.parse_page(html, PAGE)
    candidates, counts = extract.extract_candidates(html, PAGE)  # (the WARC reader's page_candidates: parse_page)
    assert page.candidates == candidates == [] and page.rejects == []
    assert counts["img_in_template"] == 1 and counts["img"] == 0


def test_an_img_after_a_closed_template_is_still_a_candidate():
    page = extract.parse_page('<body><template><p>t</p></template><div><img src="a.jpg" alt="A"></div></body>', PAGE)
    assert [c["alt"] for c in page.candidates] == ["A"] and page.counts["img_in_template"] == 0


# -- SVG bytes for an <img> ---------------------------------------------------------------------------------------

SVG = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
       b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="400">'
       + b'<rect width="400" height="400" fill="red"/>' * 40 + b"</svg>")
SVG_SPELLINGS = [
    SVG,
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><circle r="4"/></svg>',
    b'\xef\xbb\xbf  \n<svg viewBox="0 0 8 8"/>',
    b'<?xml version="1.0"?>\n<!-- Generator: Adobe Illustrator -->\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
    b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" [\n<!ENTITY ns_svg "http://www.w3.org/2000/svg">\n]>\n'
    b'<svg version="1.1" xmlns="&ns_svg;"><path d="M0 0"/></svg>',
    b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg"/>',
]
NOT_SVG = [
    b"<!doctype html><html><body>not found</body></html>",
    b'<!-- page --><html><body><svg viewBox="0 0 8 8"></svg></body></html>',  # an HTML page with an inline <svg>
    b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body><svg/></body></html>',
    b"<svgx/>",
    gzip.compress(SVG),  # .svgz: not told apart (out of scope), still no image
]


@pytest.mark.parametrize("data", SVG_SPELLINGS)
def test_svg_bytes_are_format_not_allowed_naming_svg(data):
    check = images.validate_image(data)
    assert (check.ok, check.reason, check.format) == (False, "format_not_allowed", "SVG")
    assert check.detail == "SVG not in JPEG,PNG,WEBP,GIF"  # as a TIFF's: "TIFF not in JPEG,PNG,WEBP,GIF"
    assert imageio.sniff_format(data) == "SVG"


def test_svg_is_reported_like_another_format_not_allowed():
    tiff = images.validate_image(_tiff())
    svg = images.validate_image(SVG)
    assert tiff.reason == svg.reason == "format_not_allowed"
    assert tiff.detail.startswith("TIFF not in ") and svg.detail.startswith("SVG not in ")
    # no formats named (every format allowed): still no image LAIT opens, and said so
    check = images.validate_image(SVG, formats=None)
    assert (check.reason, check.detail) == ("format_not_allowed", "SVG is not a format LAIT opens")


@pytest.mark.parametrize("data", NOT_SVG)
def test_other_markup_is_still_image_decode_error(data):
    assert images.validate_image(data).reason == "image_decode_error"
    assert imageio.sniff_format(data) is None


def test_the_filter_stage_agrees_with_the_crawl():
    for data in SVG_SPELLINGS:
        padded = data + b" " * 1000  # (over the filter's min_bytes)
        decision = ImageFilter()({"image_bytes": padded})
        assert (decision.reason, decision.detail) == ("image_format_not_allowed", "SVG")
        assert images.validate_image(padded).reason == "format_not_allowed"
    for data in NOT_SVG:
        assert ImageFilter()({"image_bytes": data + b" " * 1000}).reason == "image_corrupt"


def _tiff() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (400, 320), (1, 2, 3)).save(buffer, "TIFF")
    return buffer.getvalue()
