"""`lait crawl`'s options and LAIT_* settings: a value the crawl cannot use is refused in one line before
anything is written, and a page domain given as a URL or host:port is taken by its host."""
import json
import math
import os
import subprocess
import sys

import pytest

from crawler import runner
from crawler.spiders import lait as spider_module
from lait import cli
from tests.crawler.mocksite import HTML, JPEG, TEST_MIN_SIDE, TEST_SETTINGS, MockSite, html, jpeg
from tests.crawler.test_crawl_site import ROOT, small_site
from tests.inprocess import lait_crawl_here

SOURCES = {"crawl": ["http://127.0.0.1:9/"], "warc": ["--warc", "missing.warc.gz"]}


def _refused(tmp_path, capsys, source: str, *args: str) -> str:
    """Run `lait crawl` in this process with ``args``; assert it refused them (exit 2, one line, nothing made)
    and return the line."""
    out = tmp_path / "crawl"
    code = cli.main(["crawl", *SOURCES[source], "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lait crawl: ") and "Traceback" not in err, err
    assert not out.exists()
    return err


# -- page domains ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, host, taken", [
    ("example.org", "example.org", False),
    (".Example.ORG", "example.org", False),
    ("Bücher.de", "xn--bcher-kva.de", False),
    ("127.0.0.1", "127.0.0.1", False),
    ("::1", "::1", False),
    ("http://127.0.0.1:8080", "127.0.0.1", True),
    ("127.0.0.1:8080", "127.0.0.1", True),
    ("https://user@Example.org/path?q=1", "example.org", True),
    ("example.org/gallery/", "example.org", True),
    ("http://[::1]:8080/", "::1", True),
    ("http://bücher.de/", "xn--bcher-kva.de", True),
])
def test_a_page_domain_is_the_host_a_value_names(value, host, taken):
    assert spider_module.page_domain(value) == (host, taken)


@pytest.mark.parametrize("value", ["", " ", ".", "http://", "https:///path", "/gallery/", "http:/example.org",
                                   "*.example.org", "exa mple.org", "example.org:port"])
def test_a_value_that_names_no_host_is_no_page_domain(value):
    with pytest.raises(ValueError, match="names no host"):
        spider_module.page_domain(value)


def test_the_spider_takes_the_host_of_a_url_or_host_port_and_compares_hosts_in_idna(caplog):
    from scrapy.utils.test import get_crawler

    def spider(domains):
        crawler = get_crawler(spider_module.LaitSpider, {})
        return spider_module.LaitSpider.from_crawler(crawler, urls="http://127.0.0.1:8080/p0.html",
                                                     allowed_domains=domains)

    taken = spider("http://127.0.0.1:8080,Bücher.de")  # `scrapy crawl lait -a allowed_domains=...`
    assert taken.page_domains == ["127.0.0.1", "xn--bcher-kva.de"]
    assert "took the host 127.0.0.1 from 'http://127.0.0.1:8080'" in caplog.text
    assert taken._in_domains("http://127.0.0.1:8080/p1.html")
    assert taken._in_domains("http://xn--bcher-kva.de/a.html") and taken._in_domains("http://www.BÜCHER.de/a.html")
    assert not taken._in_domains("http://example.org/")
    assert spider(None).page_domains == ["127.0.0.1"]  # the start URLs' hosts
    with pytest.raises(ValueError, match="allowed_domains: 'http://' names no host"):
        spider("example.org,http://")


@pytest.mark.parametrize("value", ["", "http://", "/gallery/"])
def test_crawl_refuses_an_allowed_domain_that_names_no_host(tmp_path, capsys, value):
    err = _refused(tmp_path, capsys, "crawl", "--allowed-domains", "example.org", value)
    assert f"--allowed-domains: {value!r} names no host" in err


def test_allowed_domains_given_as_a_url_or_host_port_crawl_the_whole_site(tmp_path):
    """Before: the start page only, without a word (its links' host 127.0.0.1 is not '127.0.0.1:PORT')."""
    with small_site(3) as site:
        result = lait_crawl_here(site.url + "/p0.html", "--out", str(tmp_path / "out"), "--allow-private-networks",
                                 "--min-side", str(TEST_MIN_SIDE), "--allowed-domains", site.url,
                                 site.url.split("//")[1], settings=TEST_SETTINGS)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["lait/page/fetched"] == 3 and stats["kept"] == 9
    warnings = [line for line in result.stderr.splitlines() if "--allowed-domains" in line]
    assert warnings == [f"lait crawl: --allowed-domains: took the host 127.0.0.1 from {site.url!r}",
                        f"lait crawl: --allowed-domains: took the host 127.0.0.1 from {site.url.split('//')[1]!r}"]


# -- numeric options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("option, value, must_be", [
    ("--max-aspect", "0.5", "0 (off) or 1 or more (long side over short side)"),
    ("--max-aspect", "nan", "0 (off) or 1 or more (long side over short side)"),
    ("--max-aspect", "-3", "0 (off) or 1 or more (long side over short side)"),
    ("--min-side", "-5", "a whole number of pixels, 0 or more"),
])
def test_crawl_refuses_an_option_value_that_makes_no_sense(tmp_path, capsys, source, option, value, must_be):
    err = _refused(tmp_path, capsys, source, option, value)
    assert f"{option} must be {must_be}, got " in err


def test_max_aspect_0_turns_the_aspect_check_off_as_in_lait_filter(tmp_path):
    """Before: every image was rejected as aspect_ratio_out_of_range."""
    site = MockSite({})
    site.pages.update({
        "/robots.txt": (404, HTML, b""),
        "/p.html": (200, HTML, html('<img src="/img/wide.jpg" alt="A wide one"><img src="/img/a.jpg" alt="A photo">')),
        "/img/wide.jpg": (200, JPEG, jpeg(400, 64)), "/img/a.jpg": (200, JPEG, jpeg(96, 72)),
    })
    with site:
        lait_crawl_here(site.url + "/p.html", "--out", str(tmp_path / "off"), "--allow-private-networks", "--min-side",
                        str(TEST_MIN_SIDE), "--max-aspect", "0", settings=TEST_SETTINGS)
    stats = json.loads((tmp_path / "off" / "stats.json").read_text())
    assert stats["kept"] == 2 and stats["rejected"] == 0


def test_max_aspect_0_reaches_the_warc_reader_as_no_limit(tmp_path, monkeypatch):
    from crawler import warc

    calls = []
    monkeypatch.setattr(warc, "read_warcs", lambda files, out, **kwargs: calls.append(kwargs) or {
        "in": 0, "kept": 0, "rejected": 0, "rejected_by_reason": {}})
    assert cli.main(["crawl", "--warc", "a.warc.gz", "--out", str(tmp_path / "out"), "--max-aspect", "0",
                     "--no-progress"]) == 0
    assert calls[0]["max_aspect"] == math.inf


# -- LAIT_* settings -------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ('LAIT_ALLOWED_NETWORKS=["notacidr"]', "LAIT_ALLOWED_NETWORKS: 'notacidr' is not a network"),
    ("LAIT_ALLOWED_NETWORKS=5", "LAIT_ALLOWED_NETWORKS must be a list of networks"),
    ("LAIT_ROWS_PER_SHARD=abc", "LAIT_ROWS_PER_SHARD must be a whole number, 1 or more, got 'abc'"),
    ("LAIT_ROWS_PER_SHARD=0", "LAIT_ROWS_PER_SHARD must be a whole number, 1 or more, got 0"),
    ("LAIT_MAX_PIXELS=0", "LAIT_MAX_PIXELS must be a whole number of pixels, 1 or more, got 0"),
    ("LAIT_MIN_SIDE=-5", "LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got -5"),
    ("LAIT_MAX_ASPECT=nan", "LAIT_MAX_ASPECT must be 0 (off) or 1 or more (long side over short side), got 'nan'"),
    ("LAIT_IMAGE_MAXSIZE=0", "LAIT_IMAGE_MAXSIZE must be a whole number of bytes, 1 or more, got 0"),
    ("LAIT_PAGE_MAXSIZE=1e3x", "LAIT_PAGE_MAXSIZE must be a whole number of bytes, 1 or more, got '1e3x'"),
    ("LAIT_IMAGE_STORE_MEMORY=-1", "LAIT_IMAGE_STORE_MEMORY must be a whole number of bytes, 0 or more, got -1"),
    ("LAIT_LIVE_COUNTS_INTERVAL=0", "LAIT_LIVE_COUNTS_INTERVAL must be a number of seconds above 0, got 0"),
    ("LAIT_PROGRESS=maybe", "LAIT_PROGRESS must be true or false, got 'maybe'"),
    ("LAIT_ALLOW_PRIVATE_NETWORKS=yes", "LAIT_ALLOW_PRIVATE_NETWORKS must be true or false, got 'yes'"),
    ('LAIT_IMAGE_FORMATS=["JPG", "PSD"]', "LAIT_IMAGE_FORMATS: 'PSD' is not an image format LAIT opens"),
    ("LAIT_IMAGE_FORMATS=[]", "LAIT_IMAGE_FORMATS: give at least one image format"),
    ("LAIT_ROBOTS_RETRY_AFTER=-1", "LAIT_ROBOTS_RETRY_AFTER must be a number of seconds, 0 or more"),
    # A JSON true is no number (Scrapy's getint read it as 1), as the text `true` is none to the native spider.
    ("LAIT_MIN_SIDE=true", "LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got 'true'"),
    ("LAIT_MAX_ASPECT=true", "LAIT_MAX_ASPECT must be 0 (off) or 1 or more (long side over short side), got 'true'"),
    ("LAIT_MAX_PIXELS=false", "LAIT_MAX_PIXELS must be a whole number of pixels, 1 or more, got 'false'"),
    ("LAIT_ROWS_PER_SHARD=true", "LAIT_ROWS_PER_SHARD must be a whole number, 1 or more, got 'true'"),
    ("LAIT_IMAGE_MAXSIZE=true", "LAIT_IMAGE_MAXSIZE must be a whole number of bytes, 1 or more, got 'true'"),
    ("LAIT_LIVE_COUNTS_INTERVAL=true", "LAIT_LIVE_COUNTS_INTERVAL must be a number of seconds above 0, got 'true'"),
    ("LAIT_ROBOTS_RETRY_AFTER=true", "LAIT_ROBOTS_RETRY_AFTER must be a number of seconds, 0 or more, not 'true'"),
    ("LAIT_MIN_SIDE=1.5", "LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got 1.5"),
    ("LAIT_MAX_PIXELS=abc", "LAIT_MAX_PIXELS must be a whole number of pixels, 1 or more, got 'abc'"),
]


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("setting, message", BAD_SETTINGS)
def test_crawl_refuses_a_lait_setting_it_cannot_run_with(tmp_path, capsys, source, setting, message):
    err = _refused(tmp_path, capsys, source, "-s", setting)
    assert err.startswith(f"lait crawl: -s {message}"), err


def test_the_default_settings_and_sensible_values_pass():
    from scrapy.settings import Settings

    settings = Settings()
    settings.setmodule("crawler.settings")
    spider_module.check_settings(settings)
    spider_module.check_settings({"LAIT_ALLOWED_NETWORKS": "127.0.0.1/32,10.0.0.0/8", "LAIT_PROGRESS": "False",
                                  "LAIT_MAX_ASPECT": 0, "LAIT_IMAGE_FORMATS": "jpeg,png", "LAIT_ROWS_PER_SHARD": "7",
                                  "LAIT_IMAGE_MAXSIZE": "1000", "LAIT_MIN_SIDE": 0, "LAIT_MAX_PIXELS": 10**12})


def test_run_crawl_refuses_a_bad_setting_before_any_crawl_process(tmp_path):
    with pytest.raises(runner.SettingError, match="LAIT_ALLOWED_NETWORKS: 'notacidr' is not a network"):
        runner.run_crawl(["http://127.0.0.1:9/"], str(tmp_path / "out"),
                         overrides={"LAIT_ALLOWED_NETWORKS": ["notacidr"]})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"LAIT_MIN_SIDE": True}, "LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got 'true'"),
    ({"LAIT_IMAGE_MAXSIZE": False}, "LAIT_IMAGE_MAXSIZE must be a whole number of bytes, 1 or more, got 'false'"),
])
def test_run_crawl_refuses_true_or_false_for_a_number(tmp_path, overrides, message):
    """Before: Scrapy's getint read True as 1 (a minimum side of 1 px), False as 0."""
    with pytest.raises(runner.SettingError, match=f"^{message}$"):
        runner.run_crawl(["http://127.0.0.1:9/"], str(tmp_path / "out"), overrides=overrides)
    assert not (tmp_path / "out").exists()


def test_native_scrapy_crawl_refuses_a_bad_setting_at_spider_init(tmp_path):
    out = tmp_path / "native"
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "lait", "-a", "urls=http://127.0.0.1:9/", "-s", f"LAIT_OUT={out}",
         "-s", "LAIT_ROWS_PER_SHARD=abc", "-s", "LOG_LEVEL=WARNING"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "ValueError: LAIT_ROWS_PER_SHARD must be a whole number, 1 or more, got 'abc'" in result.stderr
    assert not out.exists()


# -- Scrapy's own numbers and switches --------------------------------------------------------------------

BAD_SCRAPY_SETTINGS = [
    # values Scrapy's getters do not read: the crawl process failed with a traceback
    ("DOWNLOAD_DELAY=abc", "DOWNLOAD_DELAY must be a number of seconds, not inf, got 'abc'"),
    ("CONCURRENT_REQUESTS=x", "CONCURRENT_REQUESTS must be a whole number, got 'x'"),
    ("CONCURRENT_REQUESTS=1.5", "CONCURRENT_REQUESTS must be a whole number, got 1.5"),
    ("CONCURRENT_REQUESTS=true", "CONCURRENT_REQUESTS must be a whole number, got 'true'"),
    ("DOWNLOAD_TIMEOUT=-", "DOWNLOAD_TIMEOUT must be a number of seconds, 0 (no timeout) or more, got '-'"),
    ("RETRY_ENABLED=maybe", "RETRY_ENABLED must be true or false, got 'maybe'"),
    ("TELNETCONSOLE_ENABLED=on", "TELNETCONSOLE_ENABLED must be true or false, got 'on'"),
    ("AUTOTHROTTLE_TARGET_CONCURRENCY=[4]", "AUTOTHROTTLE_TARGET_CONCURRENCY must be a number, got [4]"),
    # values Scrapy reads but cannot crawl with: the crawl waited for ever ...
    ("CONCURRENT_REQUESTS_PER_DOMAIN=0", "CONCURRENT_REQUESTS_PER_DOMAIN must be a whole number, 1 or more, got 0"),
    ("REACTOR_THREADPOOL_MAXSIZE=0", "REACTOR_THREADPOOL_MAXSIZE must be a whole number, 1 or more, got 0"),
    ("DOWNLOAD_DELAY=inf", "DOWNLOAD_DELAY must be a number of seconds, not inf, got 'inf'"),
    # ... rejected every image as image_not_fetched, or closed before the first page ...
    ("CONCURRENT_ITEMS=0", "CONCURRENT_ITEMS must be a whole number, 1 or more, got 0"),
    ("CLOSESPIDER_TIMEOUT=-1", "CLOSESPIDER_TIMEOUT must be a number of seconds, 0 (no timeout) or more, got -1"),
    ("DOWNLOAD_MAXSIZE=-1", "DOWNLOAD_MAXSIZE must be a whole number of bytes, 0 (no cap) or more, got -1"),
    ("DNS_TIMEOUT=0", "DNS_TIMEOUT must be a number of seconds above 0, got 0"),
    # ... or logged a traceback for every request or at start
    ("DOWNLOAD_TIMEOUT=-1", "DOWNLOAD_TIMEOUT must be a number of seconds, 0 (no timeout) or more, got -1"),
    ("LOGSTATS_INTERVAL=-1", "LOGSTATS_INTERVAL must be a number of seconds, 0 (off) or more, got -1"),
    ("MEMUSAGE_CHECK_INTERVAL_SECONDS=0", "MEMUSAGE_CHECK_INTERVAL_SECONDS must be a number of seconds above 0, got 0"),
]


@pytest.mark.parametrize("processes", [[], ["--processes", "2"]])
@pytest.mark.parametrize("setting, message", BAD_SCRAPY_SETTINGS)
def test_a_url_crawl_refuses_a_scrapy_setting_scrapy_cannot_read_or_crawl_with(tmp_path, capsys, processes, setting,
                                                                              message):
    """Before: the crawl process failed with Scrapy's traceback once --out was made (`could not convert string to
    float: 'abc'`), or crawled on: for ever (CONCURRENT_REQUESTS_PER_DOMAIN=0), or to no purpose."""
    err = _refused(tmp_path, capsys, "crawl", *processes, "-s", setting)
    assert err == f"lait crawl: -s {message}\n"


def test_every_value_scrapy_reads_and_crawls_with_is_taken():
    ok = {"DOWNLOAD_DELAY": 0.5, "CONCURRENT_REQUESTS": "4", "RETRY_ENABLED": "0", "COOKIES_ENABLED": "True",
          "ROBOTSTXT_OBEY": 1, "TELNETCONSOLE_ENABLED": False, "LOG_ENABLED": "true", "REDIRECT_ENABLED": 7,
          "DOWNLOAD_TIMEOUT": 0, "DNS_TIMEOUT": "inf", "CONCURRENT_ITEMS": 2.0, "DOWNLOAD_MAXSIZE": 0,
          "AUTOTHROTTLE_TARGET_CONCURRENCY": "1e1", "RETRY_TIMES": None, "CLOSESPIDER_TIMEOUT": 0,
          "USER_AGENT": "5", "LOG_LEVEL": 10}
    runner.check_settings(ok)  # `lait crawl -s` (JSON values: 2.0 is a whole number, as 1e3 is)
    native = {name: str(value) for name, value in ok.items() if value is not None}
    spider_module.check_settings(dict(native, CONCURRENT_ITEMS="2"))  # (the text "2.0" Scrapy's getint refuses)
    # Scrapy's getbool takes any whole number, as its getfloat takes NaN: not ours to refuse
    spider_module.check_settings({"RETRY_ENABLED": "2", "DOWNLOAD_DELAY": "nan", "CONCURRENT_REQUESTS": "-1"})


def test_scrapy_settings_are_read_with_the_getter_scrapy_reads_them_with():
    """A setting whose default is a number but which Scrapy reads as another kind (DOWNLOAD_DELAY = 0, read as a
    float) is in SCRAPY_GETTERS: a whole-number rule would refuse DOWNLOAD_DELAY=0.5."""
    import re

    import scrapy
    from scrapy.settings import default_settings

    call = re.compile(r"\.(getint|getfloat|getbool)\(\s*\"([A-Z0-9_]+)\"")  # settings.getint("NAME" ...
    getters: dict[str, set[str]] = {}
    for folder, _, files in os.walk(os.path.dirname(scrapy.__file__)):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    for getter, setting in call.findall(handle.read()):
                        getters.setdefault(setting, set()).add(getter)
    checked = 0
    for setting, read_with in getters.items():
        if isinstance(vars(default_settings).get(setting), (bool, int, float)):
            assert read_with == {spider_module.setting_rule(setting)[0]}, setting
            checked += 1
    assert checked > 50 and spider_module.setting_rule("DOWNLOAD_DELAY")[0] == "getfloat"


def test_a_text_setting_takes_the_text_given():
    """Before: `-s USER_AGENT=5` was the number 5, which the WARC reader refused ("must be one line of text")."""
    from lait.commands.crawl import _setting

    assert _setting("USER_AGENT=5") == ("USER_AGENT", "5")
    assert _setting("USER_AGENT=true") == ("USER_AGENT", "true")
    assert _setting("REQUEST_FINGERPRINTER_IMPLEMENTATION=2.7") == ("REQUEST_FINGERPRINTER_IMPLEMENTATION", "2.7")
    assert _setting("LAIT_JOBDIR=2024") == ("LAIT_JOBDIR", "2024")
    assert _setting('USER_AGENT="a\\nb"') == ("USER_AGENT", "a\nb")  # a JSON string is still read as one
    # numbers stay numbers, true/false stay switches (as_typed), a log level may be a number
    assert _setting("LAIT_MIN_SIDE=50") == ("LAIT_MIN_SIDE", 50)
    assert _setting("DOWNLOAD_DELAY=0.5") == ("DOWNLOAD_DELAY", 0.5)
    assert _setting("RETRY_ENABLED=false") == ("RETRY_ENABLED", False)
    assert _setting("LOG_LEVEL=10") == ("LOG_LEVEL", 10)
    assert _setting("LAIT_IMAGE_FORMATS=[\"png\"]") == ("LAIT_IMAGE_FORMATS", ["png"])


def test_lait_crawl_warc_takes_a_user_agent_that_looks_like_a_number(tmp_path, capsys):
    """Before: `lait crawl: -s USER_AGENT must be one line of text, got 5`; now it goes on to the input files."""
    code = cli.main(["crawl", "--warc", str(tmp_path / "missing.warc.gz"), "--out", str(tmp_path / "out"),
                     "--no-progress", "-s", "USER_AGENT=5"])
    assert code == 2 and capsys.readouterr().err == f"lait crawl: no such file: {tmp_path / 'missing.warc.gz'}\n"


# -- misspelt LAIT_* settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("setting, message", [
    ("LAIT_MIN_SIDEE=50", "LAIT_MIN_SIDEE is not a LAIT setting: did you mean LAIT_MIN_SIDE?"),
    ("LAIT_ALLOWED_NETWORK=[]", "LAIT_ALLOWED_NETWORK is not a LAIT setting: did you mean LAIT_ALLOWED_NETWORKS?"),
    ("lait_min_side=50", "lait_min_side is not a LAIT setting: did you mean LAIT_MIN_SIDE?"),
    ("LAIT_XYZ=1", "LAIT_XYZ is not a LAIT setting: the LAIT settings are listed in crawler/settings.py"),
])
def test_crawl_refuses_a_misspelt_lait_setting_naming_the_closest_one(tmp_path, capsys, source, setting, message):
    """Before: the crawl ran without the setting, without a word."""
    err = _refused(tmp_path, capsys, source, "-s", setting)
    assert err == f"lait crawl: -s {message}\n"


def test_scrapy_settings_and_every_lait_setting_the_crawl_knows_pass_the_name_check():
    from scrapy.settings import Settings

    settings = Settings()
    settings.setmodule("crawler.settings")
    settings.setdict({"CONCURRENT_REQUESTZ": 3, "USER_AGENT": "x", "runner": "DirectRunner"}, priority="cmdline")
    spider_module.check_settings(settings)  # Scrapy's own names, misspelt or not, are not ours to check
    # What the runner adds for each of --processes N.
    spider_module.check_settings({"LAIT_SHARD_PREFIX": "part-p1", "LAIT_STATS_PART": "s.json",
                                  "LAIT_OUTCOMES_PART": "o.json", "LAIT_LIVE_COUNTS": "live.json"})


def test_every_lait_setting_named_in_the_crawl_code_is_a_known_one():
    """A setting the code reads but crawler/settings.py does not list would be refused as a misspelling."""
    import re

    named = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "crawler")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    named.update(re.findall(r"\bLAIT_[A-Z0-9_]+", handle.read()))
    with open(os.path.join(ROOT, "lait", "commands", "crawl.py"), encoding="utf-8") as handle:
        named.update(re.findall(r"\bLAIT_[A-Z0-9_]+", handle.read()))
    assert "LAIT_SHARD_PREFIX" in named and "LAIT_MIN_SIDE" in named
    assert named <= spider_module.KNOWN_SETTINGS, sorted(named - spider_module.KNOWN_SETTINGS)


@pytest.mark.parametrize("setting, message", [
    ("LAIT_MIN_SIDEE=50", "ValueError: LAIT_MIN_SIDEE is not a LAIT setting: did you mean LAIT_MIN_SIDE?"),
    # The DNS resolver reads these two before the spider starts: its error names them too.
    ("LAIT_ALLOWED_NETWORKS=garbage", "ValueError: LAIT_ALLOWED_NETWORKS: 'garbage' is not a network (a CIDR such "
                                      "as 127.0.0.1/32)"),
    ("LAIT_ALLOW_PRIVATE_NETWORKS=yes", "ValueError: LAIT_ALLOW_PRIVATE_NETWORKS must be true or false, got 'yes'"),
    # The native command line gives text: `true` is no number there either (`lait crawl` reads it alike).
    ("LAIT_MIN_SIDE=true", "ValueError: LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got 'true'"),
    # Scrapy's own settings are checked at spider init too (before: Scrapy's own words once the engine started,
    # `invalid literal for int() with base 10: 'x'`, or a traceback for every request)
    ("CONCURRENT_REQUESTS=x", "ValueError: CONCURRENT_REQUESTS must be a whole number, got 'x'"),
    ("DOWNLOAD_TIMEOUT=-1",
     "ValueError: DOWNLOAD_TIMEOUT must be a number of seconds, 0 (no timeout) or more, got '-1'"),
])
def test_native_scrapy_crawl_names_a_misspelt_or_bad_setting(tmp_path, setting, message):
    """Before: a misspelt name was ignored, and the resolver's settings failed with Python's own words
    ("'garbage' does not appear to be an IPv4 or IPv6 network")."""
    out = tmp_path / "native"
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "lait", "-a", "urls=http://127.0.0.1:9/", "-s", f"LAIT_OUT={out}",
         "-s", setting, "-s", "LOG_LEVEL=WARNING"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not out.exists()


# -- the network guard's settings: one reader ---------------------------------------------------------------

def test_the_guard_settings_have_one_reader_for_the_resolver_the_middleware_and_the_check():
    import ipaddress

    from scrapy.settings import BaseSettings
    from scrapy.utils.test import get_crawler

    from crawler import middlewares, resolver

    settings = BaseSettings({"LAIT_ALLOW_PRIVATE_NETWORKS": "true", "LAIT_ALLOWED_NETWORKS": "127.0.0.1/32,::1"})
    assert resolver.guard_settings(settings) == (True, (ipaddress.ip_network("127.0.0.1/32"),
                                                        ipaddress.ip_network("::1/128")))
    assert resolver.guard_settings(BaseSettings()) == (False, ())
    bad = {"LAIT_ALLOWED_NETWORKS": ["10.0.0.0/8", "garbage"]}
    for build in (lambda crawler: resolver.GuardedResolver.from_crawler(crawler, reactor=None),
                  middlewares.NetworkGuardMiddleware.from_crawler):
        with pytest.raises(ValueError, match=r"^LAIT_ALLOWED_NETWORKS: 'garbage' is not a network"):
            build(get_crawler(spider_module.LaitSpider, bad))
    guard = middlewares.NetworkGuardMiddleware.from_crawler(
        get_crawler(spider_module.LaitSpider, {"LAIT_ALLOWED_NETWORKS": ["127.0.0.1"]}))
    assert guard.allowed_networks == ("127.0.0.1/32",) and not guard.allow_private_networks


# -- LAIT_IMAGE_FORMATS ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, formats", [
    ("JPG", ("JPEG",)), ("jpg,png", ("JPEG", "PNG")), (["Jpg", "JPEG", "webp"], ("JPEG", "WEBP")),
    ("tif", ("TIFF",)), ("mpo", ("JPEG",)),
])
def test_image_formats_take_the_filter_stages_names(value, formats):
    """Before: `JPG` was refused, while `lait filter --formats jpg` takes it as JPEG."""
    from scrapy.utils.test import get_crawler

    spider_module.check_settings({"LAIT_IMAGE_FORMATS": value})
    crawler = get_crawler(spider_module.LaitSpider, {"LAIT_IMAGE_FORMATS": value})
    spider = spider_module.LaitSpider.from_crawler(crawler, urls="http://127.0.0.1:9/")
    assert spider.formats == formats


def test_a_crawl_with_image_formats_jpg_keeps_the_jpeg_images(tmp_path):
    from tests.crawler.mocksite import png

    site = MockSite({})
    site.pages.update({
        "/robots.txt": (404, HTML, b""),
        "/p.html": (200, HTML, html('<img src="/img/a.jpg" alt="A photo"><img src="/img/b.png" alt="A drawing">')),
        "/img/a.jpg": (200, JPEG, jpeg(96, 72)), "/img/b.png": (200, {"Content-Type": "image/png"}, png(96, 72)),
    })
    with site:
        lait_crawl_here(site.url + "/p.html", "--out", str(tmp_path / "out"), "--allow-private-networks", "--min-side",
                        str(TEST_MIN_SIDE), settings=dict(TEST_SETTINGS, LAIT_IMAGE_FORMATS=["jpg"]))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["kept"] == 1 and stats["rejected_by_reason"] == {"format_not_allowed": 1}


# -- what --warc would ignore --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--max-pages", "5", "--depth", "2"], "--max-pages and --depth apply to the spider, not to --warc"),
    (["--allowed-domains", "example.org"], "--allowed-domains applies to the spider, not to --warc"),
    (["--processes", "2", "--jobdir", "job"], "--processes and --jobdir apply to the spider, not to --warc"),
    # given, at their defaults: ignored all the same (before: taken, as they equal the defaults)
    (["--max-pages", "0"], "--max-pages applies to the spider, not to --warc"),
    (["--depth", "0", "--processes", "1"], "--depth and --processes apply to the spider, not to --warc"),
    (["-s", "LAIT_PAGE_MAXSIZE=1000", "-s", "LAIT_ALLOWED_NETWORKS=[]"],
     "-s LAIT_PAGE_MAXSIZE and -s LAIT_ALLOWED_NETWORKS apply to the spider, not to --warc"),
    (["--depth", "1", "-s", "LAIT_ROWS_PER_SHARD=5", "-s", "CONCURRENT_REQUESTS=4"],
     "--depth, -s LAIT_ROWS_PER_SHARD and -s CONCURRENT_REQUESTS apply to the spider, not to --warc"),
])
def test_lait_crawl_warc_refuses_what_only_the_spider_reads(tmp_path, capsys, args, message):
    """Before: --warc ran without them, without a word (here: on to its missing input file)."""
    err = _refused(tmp_path, capsys, "warc", *args)
    assert err == f"lait crawl: {message}\n"


@pytest.mark.parametrize("args, message", [
    (["--no-download", "-s", "USER_AGENT=MyLab/1.0", "-s", "DOWNLOAD_DELAY=0"],
     "-s USER_AGENT and -s DOWNLOAD_DELAY apply to downloading the images the WARC files lack, which --no-download "
     "turns off"),
    (["--no-download", "--allow-private-networks"],
     "--allow-private-networks applies to downloading the images the WARC files lack, which --no-download turns off"),
])
def test_lait_crawl_warc_refuses_download_settings_with_no_download(tmp_path, capsys, args, message):
    """Before: taken, and nothing read them."""
    assert _refused(tmp_path, capsys, "warc", *args) == f"lait crawl: {message}\n"


@pytest.mark.parametrize("setting, message", [
    ("DOWNLOAD_DELAY=abc", "DOWNLOAD_DELAY must be a number of seconds, 0 or more, got 'abc'"),
    ("DOWNLOAD_DELAY=-1", "DOWNLOAD_DELAY must be a number of seconds, 0 or more, got -1"),
    ("DOWNLOAD_TIMEOUT=0", "DOWNLOAD_TIMEOUT must be a number of seconds above 0, got 0"),
    ("DOWNLOAD_TIMEOUT=true", "DOWNLOAD_TIMEOUT must be a number of seconds above 0, got 'true'"),
    ('USER_AGENT="a\\nb"', "USER_AGENT must be one line of text, got 'a\\nb'"),
    ("direct_running_mode=bogus", "direct_running_mode: Beam options: argument --direct_running_mode: invalid choice: "
                                  "'bogus'"),
    ("runner=Bogus", "runner must be a local runner (DirectRunner) with lait crawl --warc, got 'Bogus'"),
    ("runner=DataflowRunner", "runner must be a local runner (DirectRunner) with lait crawl --warc, got "
                              "'DataflowRunner': run python -m crawler.warc with that runner's own options"),
])
def test_lait_crawl_warc_refuses_a_setting_its_reader_cannot_use_in_one_line(tmp_path, capsys, setting, message):
    """Before: the WARC reader's usage text (`argument --download_delay: invalid float value`), a Beam traceback
    once the previous output was cleared (a runner name), or a timeout of 0 s for every download."""
    err = _refused(tmp_path, capsys, "warc", "-s", setting)
    assert err.startswith(f"lait crawl: -s {message}"), err


def test_lait_crawl_warc_takes_what_it_reads(tmp_path, monkeypatch, capsys):
    from crawler import warc

    calls = []
    monkeypatch.setattr(warc, "read_warcs", lambda files, out, **kwargs: calls.append(kwargs) or {
        "in": 0, "kept": 0, "rejected": 0, "rejected_by_reason": {}})
    settings = ["DOWNLOAD_DELAY=0", "DOWNLOAD_TIMEOUT=2", "LAIT_ROBOTS_RETRY_AFTER=5", "LAIT_IMAGE_MAXSIZE=1000",
                "runner=DirectRunner", "direct_running_mode=in_memory", "USER_AGENT=MyLab/1.0",
                'LAIT_IMAGE_FORMATS=["png"]', "LAIT_MAX_PIXELS=1000000", "LAIT_MIN_SIDE=50", "LAIT_MAX_ASPECT=4",
                "LAIT_ALLOW_PRIVATE_NETWORKS=true", "URLLENGTH_LIMIT=3000"]
    code = cli.main(["crawl", "--warc", "a.warc.gz", "--out", str(tmp_path / "out"), "--no-progress",
                     "--files-per-part", "2", *[arg for setting in settings for arg in ("-s", setting)]])
    assert code == 0, capsys.readouterr().err
    assert calls[0]["settings"]["LAIT_IMAGE_MAXSIZE"] == 1000
    assert set(calls[0]["settings"]) == set(warc.READ_SETTINGS)


def test_lait_crawl_warc_passes_the_settings_its_reader_has_options_for(tmp_path):
    """USER_AGENT, LAIT_IMAGE_FORMATS, LAIT_MAX_PIXELS and LAIT_MIN_SIDE reach the WARC reader's --user_agent,
    --image_formats, --max_pixels and --min_side. Before: refused ("use python -m crawler.warc --user_agent"), and
    LAIT_IMAGE_MAXSIZE=1e6 (a whole number) failed in the reader's parser as '1000000.0'."""
    from tests.crawler.test_crawl_warc import write_test_warcs

    site = MockSite({"/img/online.jpg": (200, JPEG, jpeg(96, 72)),
                     "/robots.txt": (200, {"Content-Type": "text/plain"},
                                     b"User-agent: TestBot\nDisallow: /img/online.jpg\n\nUser-agent: *\nAllow: /\n")})
    with site:
        files = write_test_warcs(str(tmp_path), site.url)
        out = tmp_path / "out"
        result = lait_crawl_here("--warc", *files, "--out", str(out), "--allow-private-networks", check=False,
                                 settings={"USER_AGENT": "TestBot/1.0", "LAIT_MAX_PIXELS": 5000,
                                           "LAIT_IMAGE_FORMATS": ["png"], "LAIT_MIN_SIDE": TEST_MIN_SIDE,
                                           "LAIT_IMAGE_MAXSIZE": 1e6, "DOWNLOAD_DELAY": 0, "DOWNLOAD_TIMEOUT": 2})
        assert result.returncode == 0, result.stderr[-3000:]
        assert site.counts["/img/online.jpg"] == 0  # robots.txt disallows it to TestBot only
    from schemas import read_table

    rejected = read_table(str(out / "rejected"), "rejected").to_pylist()
    reasons = {(row["image_url"] or "").rsplit("/", 1)[-1]: row["reason"] for row in rejected}
    assert reasons["online.jpg"] == "robots_disallowed"
    assert reasons["inwarc.jpg"] == "decompression_bomb"  # 96 x 72 px, over 5,000
    assert reasons["small.jpg"] == "format_not_allowed"  # 30 x 30 px, a JPEG
    assert reasons["gone.jpg"] == "http_404"


# -- what a URL crawl would ignore --------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--no-download"], "--download/--no-download applies to --warc, not to a crawl of start URLs"),
    (["--files-per-part", "3", "-s", "runner=DirectRunner"],
     "--files-per-part and -s runner apply to --warc, not to a crawl of start URLs"),
    (["-s", "direct_running_mode=in_memory"], "-s direct_running_mode applies to --warc, not to a crawl of start URLs"),
    # given, at their defaults (before: taken)
    (["--download", "--files-per-part", "0"],
     "--download/--no-download and --files-per-part apply to --warc, not to a crawl of start URLs"),
    # Scrapy's depth middleware is off: the spider counts hops itself (before: taken, and no limit applied)
    (["-s", "DEPTH_LIMIT=2"], "-s DEPTH_LIMIT is not read (the spider tracks link depth itself): use --depth"),
])
def test_a_url_crawl_refuses_what_only_the_warc_reader_reads(tmp_path, capsys, args, message):
    """Before: the crawl ran without them (Scrapy kept the two Beam settings, and nothing read them)."""
    assert _refused(tmp_path, capsys, "crawl", *args) == f"lait crawl: {message}\n"


def test_a_url_crawl_refuses_an_empty_job_folder(tmp_path, capsys):
    """Before: `--jobdir ''` was taken as no job folder: the crawl could not be continued."""
    assert _refused(tmp_path, capsys, "crawl", "--jobdir", "") == "lait crawl: --jobdir: give a folder\n"


@pytest.mark.parametrize("setting, message", [
    ("LAIT_JOBDIR=", "-s LAIT_JOBDIR must be a folder, got ''"),
    ('LAIT_JOBDIR=["job"]', "-s LAIT_JOBDIR must be a folder, got ['job']"),
])
def test_a_url_crawl_refuses_a_job_folder_setting_that_names_no_folder(tmp_path, capsys, setting, message):
    """Before: `-s LAIT_JOBDIR=` crawled without a job folder, as `--jobdir ''` did; a list failed in the crawl
    process."""
    assert _refused(tmp_path, capsys, "crawl", "-s", setting) == f"lait crawl: {message}\n"


@pytest.mark.parametrize("processes", [[], ["--processes", "3"]])
def test_the_job_folder_setting_gets_the_job_folder_check_before_out_is_made(tmp_path, capsys, processes):
    """Before: `-s LAIT_JOBDIR` of a crawl run with another number of processes was refused only once --out was
    made, and the line named --jobdir."""
    jobdir = tmp_path / "job"
    runner.check_job_folder(str(jobdir), 2)
    err = _refused(tmp_path, capsys, "crawl", *processes, "-s", f"LAIT_JOBDIR={jobdir}")
    assert err == (f"lait crawl: -s LAIT_JOBDIR={jobdir} holds a crawl run with --processes 2, not "
                   f"{processes[-1] if processes else 1}: continue it with --processes 2, or start over with a new "
                   f"-s LAIT_JOBDIR (the work kept for each process would be lost)\n")
    assert sorted(os.listdir(jobdir)) == [runner.JOB_FILE]


# -- a setting and the option that sets it ------------------------------------------------------------------

@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("args, message", [
    (["--min-side", "100", "-s", "LAIT_MIN_SIDE=50"], "-s LAIT_MIN_SIDE sets what --min-side sets: give one of them"),
    (["--max-aspect", "0", "-s", "LAIT_MAX_ASPECT=4"], "-s LAIT_MAX_ASPECT sets what --max-aspect sets: give one of them"),
    (["--allow-private-networks", "-s", "LAIT_ALLOW_PRIVATE_NETWORKS=false"],
     "-s LAIT_ALLOW_PRIVATE_NETWORKS sets what --allow-private-networks sets: give one of them"),
    (["-s", "LAIT_PROGRESS=true"], "-s LAIT_PROGRESS sets what --no-progress sets: give one of them"),
    (["-s", "LAIT_OUT=elsewhere"], "-s LAIT_OUT is set by lait crawl itself (the run folder is --out)"),
    (["-s", "LAIT_STATS_PART=s.json", "-s", "LAIT_SHARD_PREFIX=x"],
     "-s LAIT_STATS_PART and -s LAIT_SHARD_PREFIX are set by lait crawl itself, for each crawl process"),
])
def test_a_setting_given_with_the_option_that_sets_it_is_refused(tmp_path, capsys, monkeypatch, source, args, message):
    """Before: the setting won without a word (`--min-side 100` ignored); `-s LAIT_OUT` wrote the crawl to another
    folder, then failed on the missing stats.json of --out."""
    monkeypatch.chdir(tmp_path)  # where a relative LAIT_OUT would go
    assert _refused(tmp_path, capsys, source, *args) == f"lait crawl: {message}\n"


def test_a_lait_setting_alone_still_sets_what_its_option_sets(tmp_path):
    site = MockSite({})
    site.pages.update({
        "/robots.txt": (404, HTML, b""),
        "/p.html": (200, HTML, html('<img src="/img/a.jpg" alt="A photo"><img src="/img/b.jpg" alt="A small one">')),
        "/img/a.jpg": (200, JPEG, jpeg(96, 72)), "/img/b.jpg": (200, JPEG, jpeg(40, 40)),
    })
    with site:
        lait_crawl_here(site.url + "/p.html", "--out", str(tmp_path / "out"),
                        settings=dict(TEST_SETTINGS, LAIT_MIN_SIDE=TEST_MIN_SIDE, LAIT_ALLOW_PRIVATE_NETWORKS=True))
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["kept"] == 1 and stats["rejected_by_reason"] == {"image_too_small": 1}


# -- the WARC reader's part markers -------------------------------------------------------------------------

def test_a_part_marker_in_an_object_store_is_written_whole_or_not_at_all(monkeypatch):
    """A local marker goes through the shared atomic writer; one in an object store is one object, written on close.
    Before: the marker was serialised inside the open object, so a failure there closed it, and wrote it empty."""
    import io

    from crawler import warc

    written = {}

    class StoredObject(io.BytesIO):  # Beam's object-store writers upload what was written when closed
        def __init__(self, path):
            super().__init__()
            self.path = path

        def close(self):
            if not self.closed:
                written[self.path] = self.getvalue()
            super().close()

    monkeypatch.setattr(warc.FileSystems, "create", lambda path, **kwargs: StoredObject(path))
    warc._write_json("gs://bucket/run/_parts/part-00000.json", {"rows": 3})
    assert json.loads(written["gs://bucket/run/_parts/part-00000.json"]) == {"rows": 3}
    looped = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular reference"):
        warc._write_json("gs://bucket/run/_parts/part-00001.json", looped)
    assert "gs://bucket/run/_parts/part-00001.json" not in written
