"""Options that cannot act together, or a caller that leaves options out: one-line refusals, defaults put in, and
stats.json recording only the settings that applied to the runner used."""
import argparse
import json

import pytest
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.runners.runner import PipelineRunner

from filters.rules import RuleConfig
from filters.synthetic import candidate, make_image
from lait import cli
from lait.commands import features as features_command
from pipeline import filter as filter_stage
from pipeline.features import FeatureOptions
from pipeline.options import beam_options, fill_defaults
from pipeline.outputs import finish_output
from pipeline.runners import make_pipeline
from tests.pipeline.test_filter_e2e import _write_crawl

HERE = "tests.pipeline.test_option_conflicts"


class ElsewhereRunner(PipelineRunner):
    """A third-party runner given by module path: it runs its own way, and never reads the local runner's options."""

    def run_pipeline(self, pipeline, options):
        raise RuntimeError("no run in these tests")


class InProcessRunner(FnApiRunner):
    """A third-party runner built on Beam's in-process engine, which reads the local runner's options."""


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """A crawl folder of one candidate that the default rules keep."""
    return _write_crawl(tmp_path_factory.mktemp("crawl"),
                        [candidate(make_image(40, 400, 400), "a brown dog running on the beach", 0)])


# ---------------------------------------------------------------------------------------------- lait features

def test_read_window_with_fewer_than_two_decode_workers_is_refused(tmp_path, capsys):
    """--read-window shares the input among DataLoader worker processes: with --num-workers 0 or 1 it does nothing,
    so given at all (0, its default, too) it is a one-line error naming both, before the output is made."""
    base = ["features", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detector", "demo",
            "--random-init", "--no-progress"]
    for workers, window, starts in (("0", "4096", "none"), ("1", "4096", "one"), ("1", "0", "one")):
        assert cli.main([*base, "--num-workers", workers, "--read-window", window]) == 2
        assert capsys.readouterr().err == (f"lait features: error: --read-window {window} shares the input among "
                                           f"decode worker processes, and --num-workers {workers} starts {starts}: "
                                           f"leave --read-window out\n")
    assert not (tmp_path / "out").exists()
    parser = argparse.ArgumentParser()
    features_command.add_arguments(parser)
    base = ["--input", "in", "--output", "out", "--detector", "demo", "--random-init"]
    assert features_command.options_from_args(parser.parse_args([*base, "--read-window", "4096"])).read_window == 4096
    assert features_command.options_from_args(parser.parse_args([*base, "--num-workers", "1"])).read_window == 0
    with pytest.raises(ValueError, match="read-window 8 shares the input .* needs num-workers 2 or more, got 1"):
        FeatureOptions(detector="demo", random_init=True, num_workers=1, read_window=8)


# ---------------------------------------------------------------------------------------------- filter: build

@pytest.mark.slow  # one Beam run: ~5 s
def test_build_called_directly_fills_the_defaults_of_a_partial_namespace(crawl, tmp_path):
    """``build`` used to rely on ``run_with_args`` having put the defaults in: a Python caller's namespace holding a
    few options was an AttributeError. It fills them itself (idempotent), and stats.json records the values used."""
    out = tmp_path / "filter"
    out.mkdir()
    # (the language and vocabulary models left out: loading them would take most of the run's time)
    args = argparse.Namespace(input=str(crawl), output=str(out), min_words=3, lang_backend="langdetect",
                              no_word_model=True, vocab="none")
    p = make_pipeline(beam_options([]))
    filter_stage.build(p, args, filter_stage.resolve_input(args.input))
    p.run().wait_until_finish()
    finish_output(str(out))
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["in"], stats["kept"]) == (1, 1)
    settings = stats["settings"]
    assert settings["min_words"] == 3 and settings["phash_distance"] == 4 and settings["codec"] == "zstd"
    assert (settings["max_oov_rate"], settings["relevance_batch_size"]) == (RuleConfig.max_oov_rate, 64)
    assert settings["relevance"] is None
    filled = dict(vars(args))
    fill_defaults(args)
    assert vars(args) == filled
    with pytest.raises(ValueError, match="the filter options lack output"):
        filter_stage.build(make_pipeline(beam_options([])), argparse.Namespace(input=str(crawl)), [])


# ---------------------------------------------------------------------------------------------- filter: runners

def _recorded(*beam_args):
    """What ``lait filter``'s namespace (local settings not given: None) holds once the run's options are recorded."""
    args = argparse.Namespace(direct_num_workers=None, direct_running_mode=None)
    filter_stage._record_beam_options(args, beam_options(list(beam_args)))
    return vars(args)


def test_stats_record_the_local_settings_only_for_a_runner_that_reads_them():
    """Beam's defaults of the local settings used to be recorded for every runner, Dataflow's too."""
    assert _recorded("--runner=DataflowRunner", "--project=p") == {"runner": "DataflowRunner"}
    assert _recorded(f"--runner={HERE}.ElsewhereRunner") == {"runner": f"{HERE}.ElsewhereRunner"}
    local = {"direct_num_workers": 1, "direct_running_mode": "in_memory"}
    assert _recorded("--runner=DirectRunner") == {"runner": "DirectRunner", **local}
    assert _recorded(f"--runner={HERE}.InProcessRunner", "--direct_num_workers=2") == {
        "runner": f"{HERE}.InProcessRunner", **local, "direct_num_workers": 2}


def test_local_runner_options_with_a_runner_given_by_module_path(crawl, tmp_path, capsys):
    """A runner given by module path is judged by its class: a third-party runner never reads the local runner's
    options, which are refused as with DataflowRunner; a path to Beam's direct runner, or a runner built on its
    engine, reads them. A path that names no runner is one line, not Beam's ImportError traceback."""
    for runner in (f"{HERE}.ElsewhereRunner", "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"):
        with pytest.raises(ValueError, match=f"^--direct_num_workers applies to the local runner \\(DirectRunner\\) "
                                             f"only, and {runner} would ignore it: leave it out$"):
            beam_options([f"--runner={runner}", "--direct_num_workers=2"])
    for runner in (f"{HERE}.InProcessRunner", "apache_beam.runners.direct.direct_runner.DirectRunner"):
        beam_options([f"--runner={runner}", "--direct_num_workers=2", "--direct_running_mode=in_memory"])
    out = tmp_path / "filter"
    assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--direct_running_mode", "in_memory",
                     "--", "--runner", f"{HERE}.ElsewhereRunner"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --direct_running_mode applies to the local runner (DirectRunner) only, and {HERE}.ElsewhereRunner "
        f"would ignore it: leave it out")
    assert cli.main(["filter", "--input", str(crawl), "--output", str(out), "--runner", "no_such_module.Runner"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: Beam options: --runner no_such_module.Runner: cannot import "
                                    "no_such_module (No module named 'no_such_module')") and "Traceback" not in err
    assert not out.exists()
