"""One rule per option the stages share (filters.option_rules): `lait crawl` (its options and LAIT_* settings),
`lait filter` and `lait demo` accept and refuse the same values of --min-side and --max-aspect, each through its own
entry point, and --relevance-keep-rate alike in the filter and the demo (where 0 is the demo's own "the model's
threshold"). Before, each stage stated its rules in its own words, and the demo refused a --max-aspect of 0 that
both stages it passes it to take as "off"."""
import math
import subprocess
import sys

import pytest
from scrapy.settings import BaseSettings

from crawler.spiders import lait as spider
from demo import run as demo_run
from filters import option_rules
from lait import cli
from lait.commands import crawl as crawl_command
from pipeline import filter as filter_stage
from pipeline.options import config_from_args

TEXTS = ("-1", "0", "0.5", "1", "3", "inf", "nan")
#: What every stage takes, as typed on its command line (argparse reads --min-side as a whole number).
ACCEPTED = {"min_side": {"0", "1", "3"}, "max_aspect": {"0", "1", "3", "inf"}}


def _refusal(option: str, err: str) -> bool:
    """Whether ``err`` refuses ``option``'s value: the shared rule's line, or argparse's for a value it cannot read."""
    return f"{option} must be " in err or f"argument {option}:" in err


def _crawl_takes(tmp_path, capsys, option: str, text: str) -> bool:
    """`lait crawl --warc MISSING --OPTION TEXT`: refused in one line before anything runs, or taken (and the run
    then stops on the missing file); nothing is written either way."""
    out = tmp_path / "crawl"
    try:
        code = cli.main(["crawl", "--warc", str(tmp_path / "missing.warc.gz"), "--out", str(out), "--no-progress",
                         option, text])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert _refusal(option, err) or "no such file" in err, err
    return not _refusal(option, err)


def _filter_takes(option: str, text: str) -> bool:
    """`lait filter`'s parser and option check (``config_from_args``, run before the output is touched)."""
    try:
        config_from_args(filter_stage.build_parser().parse_args(["--input", "x", "--output", "y", option, text]))
    except SystemExit:
        return False
    except ValueError as exc:
        assert str(exc).startswith(f"{option} must be "), exc
        return False
    return True


def _demo_takes(tmp_path, capsys, option: str, text: str) -> bool:
    """`lait demo --OPTION TEXT --dry-run`: a usage error, or the plan printed."""
    try:
        code = cli.main(["demo", "--out", str(tmp_path / "run"), option, text, "--dry-run"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert (code == 2) == _refusal(option, err), err
    return code == 0


@pytest.mark.parametrize("name", sorted(ACCEPTED))
@pytest.mark.parametrize("text", TEXTS)
def test_crawl_filter_and_demo_take_the_same_values_on_their_command_lines(tmp_path, capsys, name, text):
    option = "--" + name.replace("_", "-")
    taken = {"crawl": _crawl_takes(tmp_path, capsys, option, text), "filter": _filter_takes(option, text),
             "demo": _demo_takes(tmp_path, capsys, option, text)}
    assert set(taken.values()) == {text in ACCEPTED[name]}, taken


VALUES = (-1, 0, 0.5, 1, 3, math.inf, math.nan)


def _filter_config_takes(name: str, value) -> bool:
    args = filter_stage.build_parser().parse_args(["--input", "x", "--output", "y"])
    setattr(args, name, value)
    try:
        config_from_args(args)
    except ValueError:
        return False
    return True


def _demo_config_takes(tmp_path, name: str, value) -> bool:
    try:
        demo_run.check_config(demo_run.DemoConfig(out=str(tmp_path / "run"), stop_after="site", **{name: value}))
    except ValueError:
        return False
    return True


def _setting_takes(setting: str, value) -> bool:
    try:
        spider.check_value(setting, value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name, setting", [("min_side", "LAIT_MIN_SIDE"), ("max_aspect", "LAIT_MAX_ASPECT")])
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_the_check_functions_of_the_three_stages_agree(tmp_path, name, setting, value):
    """The values as a program hands them over (a DemoConfig, a filter namespace, a -s setting's JSON value)."""
    shared = option_rules.RULES[name].accepts(value)
    taken = {"crawl setting": _setting_takes(setting, value), "filter": _filter_config_takes(name, value),
             "demo": _demo_config_takes(tmp_path, name, value)}
    assert set(taken.values()) == {shared}, taken


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("name, setting", [("min_side", "LAIT_MIN_SIDE"), ("max_aspect", "LAIT_MAX_ASPECT")])
def test_a_lait_setting_takes_what_its_option_takes(name, setting, text):
    """`lait crawl -s LAIT_MIN_SIDE=0.5` (a JSON 0.5, which Scrapy would read as 0) as `--min-side 0.5`."""
    key, value = crawl_command._setting(f"{setting}={text}")
    assert _setting_takes(key, value) == (text in ACCEPTED[name])


@pytest.mark.parametrize("value", (-0.2, 0, 0.5, 1, 1.5, math.inf, math.nan), ids=repr)
def test_relevance_keep_rate_is_the_filters_rule_in_the_demo_and_0_the_models_threshold(tmp_path, value):
    filter_takes = _filter_config_takes("relevance_keep_rate", value)
    assert filter_takes == (value in (0.5, 1))
    assert _demo_config_takes(tmp_path, "relevance_keep_rate", value) == (filter_takes or value == 0)


def test_a_refusal_is_one_line_naming_the_option_as_each_stage_calls_it(tmp_path):
    rule = option_rules.RULES["max_aspect"]
    for label, check in (("--max-aspect", lambda: config_from_args(_namespace(max_aspect=0.5))),
                         ("LAIT_MAX_ASPECT", lambda: spider.check_value("LAIT_MAX_ASPECT", 0.5)),
                         ("--max-aspect", lambda: demo_run.check_config(
                             demo_run.DemoConfig(out=str(tmp_path / "run"), stop_after="site", max_aspect=0.5)))):
        with pytest.raises(ValueError) as refused:
            check()
        assert str(refused.value) == f"{label} must be {rule.must_be}, got 0.5"
    # A setting's value as given, when it does not read as a number.
    with pytest.raises(ValueError, match=r"^LAIT_MIN_SIDE must be a whole number of pixels, 0 or more, got 'abc'$"):
        spider.check_value("LAIT_MIN_SIDE", "abc")


def _namespace(**values):
    args = filter_stage.build_parser().parse_args(["--input", "x", "--output", "y"])
    for name, value in values.items():
        setattr(args, name, value)
    return args


def test_the_crawl_and_the_filter_read_image_formats_alike():
    names = "jpg, MPO,tif,Webp"
    assert spider.image_formats(BaseSettings({"LAIT_IMAGE_FORMATS": names})) == config_from_args(
        _namespace(formats=names)).formats == option_rules.read_image_formats(names) == ("JPEG", "TIFF", "WEBP")
    for label, read in (("--formats", lambda text: config_from_args(_namespace(formats=text))),
                        ("LAIT_IMAGE_FORMATS", lambda text: spider.image_formats(BaseSettings({"LAIT_IMAGE_FORMATS": text})))):
        with pytest.raises(ValueError, match=f"^{label}: 'PSD' is not an image format LAIT opens"):
            read("JPEG,PSD")
        with pytest.raises(ValueError, match=f"^{label}: give at least one image format"):
            read(" , ")


def test_the_rule_table_imports_neither_beam_nor_scrapy():
    for module in ("filters.option_rules", "pipeline.options", "demo.run"):
        code = f"import {module}, sys; print('apache_beam' in sys.modules, 'scrapy' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        assert result.stdout.split() == ["False", "False"], (module, result.stdout, result.stderr)


@pytest.mark.parametrize("rule", ["max_aspect", "relevance_keep_rate"])
def test_a_bool_is_no_number_to_a_shared_rule(rule):
    """Python compares True as 1, which both rules accept as a number: a settings file's or a Python caller's True
    is refused, as min_side refuses it."""
    option_rules.check(rule, 1, "--x")
    with pytest.raises(ValueError, match=r"--x must be .*, got True"):
        option_rules.check(rule, True, "--x")
