"""Each request of the crawl reaches the server once: no connection closing under it is reused (Twisted then sent the
GET again on a new one, and the server served one image twice)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: With the crawl's HTTP download handler (as its settings resolve it): a page stopped at its headers (the spider's
#: not_html page), whose small body came in the same read, then an image of the host requested at once.
STOPPED_PAGE_THEN_IMAGE = r"""
import asyncio, json, sys
from scrapy.utils.reactor import install_reactor
install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
from twisted.internet import reactor
from scrapy import Request, signals
from scrapy.exceptions import StopDownload
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler
from tests.crawler.mocksite import JPEG, MockSite, jpeg

settings = Settings()
settings.setmodule("crawler.settings", priority="project")
handler_class = settings.getwithbase("DOWNLOAD_HANDLERS")["http"]
site = MockSite({"/notes.txt": (200, {"Content-Type": "text/plain"}, b"plain text, not a page"),
                 "/img/a.jpg": (200, JPEG, jpeg(96, 72))}, one_write=True)
crawler = get_crawler(settings_dict={})

def stop_at_headers(headers, request, **kwargs):
    if request.url.endswith(".txt"):
        raise StopDownload(fail=False)

crawler.signals.connect(stop_at_headers, signals.headers_received)
handler = load_object(handler_class)(crawler)
result = {}

async def main():
    page = await handler.download_request(Request(site.url + "/notes.txt"))
    image = await handler.download_request(Request(site.url + "/img/a.jpg"))
    result.update(statuses=[page.status, image.status], counts=dict(site.counts), handler=handler_class)
    await handler.close()

with site:
    done = deferred_from_coro(main())
    done.addErrback(lambda failure: result.update(error=repr(failure.value)))
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
print(json.dumps(result))
"""


def test_a_request_after_a_download_stopped_at_its_headers_reaches_the_server_once():
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.run([sys.executable, "-c", STOPPED_PAGE_THEN_IMAGE], env=env, capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    assert result["statuses"] == [200, 200]
    # Scrapy's own handler pooled the page's closing connection; the image's GET went out on it and again.
    assert result["counts"] == {"/notes.txt": 1, "/img/a.jpg": 1}, result
