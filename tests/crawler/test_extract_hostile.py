"""Pages made to be slow to extract: parts shared by many images were read again for each. A ``<figure>``'s caption,
an ancestor's ``title=`` and a ``<picture>``'s ``<source srcset>`` were normalised or parsed once per image (a 1 MB
caption over 100 images took 20 s in the spider's callback, blocking the crawl), and each image without text walked
up its ancestors in Python (10,000 images 2,000 deep took 20 s). The work is counted, not timed: the text normaliser,
the srcset parser and the element reads are wrapped to tally what they are handed, and fail the test at once when a
page's work goes past a small multiple of its size (before the fix it went past it on the third or so image)."""
import lxml.html
import pytest

from crawler import extract

PAGE = "http://example.org/dir/page.html"
MB = 2**20


def page(body: str) -> str:
    return '<html lang="en"><head><title>t</title></head><body>' + body + "</body></html>"


class Budget:
    """Tallies the work a wrapped function is handed and stops the parse once it exceeds ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.spent = limit, 0

    def spend(self, amount: int) -> None:
        self.spent += amount
        assert self.spent <= self.limit, f"over budget: {self.spent} > {self.limit}"


@pytest.fixture
def normalised(monkeypatch):
    """A Budget factory whose budget counts the characters handed to ``extract.normalize_text``."""
    def make(limit: int) -> Budget:
        budget, normalize = Budget(limit), extract.normalize_text

        def counting(value):
            budget.spend(len(value or ""))
            return normalize(value)

        monkeypatch.setattr(extract, "normalize_text", counting)
        return budget
    return make


def test_a_caption_shared_by_many_images_is_read_once(normalised):
    caption = "word " * (MB // 5)
    html = page("<figure><figcaption>" + caption + "</figcaption>" + '<img src="/a.jpg">' * 200 + "</figure>")
    budget = normalised(3 * len(html))  # the caption, the page's text (which holds it) and the rest, once each
    result = extract.parse_page(html, PAGE)
    assert [c["figcaption"] for c in result.candidates] == [caption.strip()] * 200
    assert budget.spent < 3 * MB


def test_an_ancestors_title_shared_by_many_images_is_read_once(normalised):
    title = "word " * (MB // 5)
    html = page('<a title="' + title + '">' + '<img src="/a.jpg">' * 200 + "</a>")
    budget = normalised(2 * len(html))
    result = extract.parse_page(html, PAGE)
    assert [c["title"] for c in result.candidates] == [title.strip()] * 200
    assert budget.spent < 2 * MB


def test_a_pictures_sources_shared_by_many_images_are_parsed_once(monkeypatch):
    srcset = ", ".join(f"/s{i}.jpg {i}w" for i in range(60_000))  # about 1 MB
    html = page('<picture><source srcset="' + srcset + '">' + '<img src="/a.jpg" alt="x">' * 100 + "</picture>")
    budget, parse_srcset = Budget(2 * len(html)), extract.parse_srcset

    def counting(value):
        budget.spend(len(value))
        return parse_srcset(value)

    monkeypatch.setattr(extract, "parse_srcset", counting)
    result = extract.parse_page(html, PAGE)
    assert [c["image_url"] for c in result.candidates] == ["http://example.org/s59999.jpg"] * 100
    assert budget.spent == len(srcset)  # once, and the images have no srcset of their own


@pytest.mark.parametrize("outer", ["", ' title="Outer"'])
def test_many_deeply_nested_images_walk_up_each_ancestor_once(monkeypatch, outer):
    """5,000 images without text 1,000 elements deep: the reads of elements (``get``, ``getparent``) stay a small
    multiple of the elements, where each image walked up all 1,000 ancestors before."""
    html = page(f"<div{outer}>" + "<div>" * 999 + '<img src="/a.jpg">' * 5000)
    budget = Budget(40 * (1000 + 5000))  # (about 12 per image now; over 5,000,000 in all before)
    for name in ("get", "getparent"):
        method = getattr(lxml.html.HtmlElement, name)

        def counting(self, *args, _method=method):
            budget.spend(1)
            return _method(self, *args)

        monkeypatch.setattr(lxml.html.HtmlElement, name, counting)
    result = extract.parse_page(html, PAGE)
    if outer:
        assert [c["title"] for c in result.candidates] == ["Outer"] * 5000 and not result.rejects
    else:
        assert not result.candidates and result.counts["no_text"] == 5000


def test_what_images_share_stays_with_the_elements_that_share_it():
    """Work shared across a page's images gives each image what its own ancestors give it: a nearer title
    (``title=""`` too) wins, a sibling branch's caption, title or picture is not taken, nor a template's."""
    html = page(
        '<div title="A"><img src="/1.jpg"><span title=""><img src="/2.jpg"></span><p><img src="/3.jpg"></p></div>'
        '<div><img src="/4.jpg"></div>'
        '<figure><figcaption>Cap</figcaption><img src="/5.jpg"><figure><img src="/6.jpg"></figure></figure>'
        '<figure><img src="/7.jpg"></figure>'
        '<picture><source type="image/webp" srcset="/8.webp 2x"><img src="/8.jpg" alt="p"></picture>'
        '<picture><img src="/9.jpg" alt="q"></picture>'
        '<template><div title="T"><img src="/10.jpg"></div></template><div title="B"><img src="/11.jpg"></div>')
    result = extract.parse_page(html, PAGE, formats=("JPEG", "PNG"))
    kept = [(c["image_url"].rsplit("/", 1)[1], c["title"], c["figcaption"]) for c in result.candidates]
    assert kept == [("1.jpg", "A", None), ("3.jpg", "A", None), ("5.jpg", None, "Cap"), ("8.jpg", None, None),
                    ("9.jpg", None, None), ("11.jpg", "B", None)]
    assert sorted(r["image_url"].rsplit("/", 1)[1] for r in result.rejects) == ["2.jpg", "4.jpg", "6.jpg", "7.jpg"]
    assert result.counts["img_in_template"] == 1
    webp = extract.parse_page(html, PAGE, formats=("JPEG", "WEBP"))
    assert [c["image_url"].rsplit("/", 1)[1] for c in webp.candidates][3] == "8.webp"
