"""Beam's import-time "apitools not found" warning is silenced; every other warning still gets through."""
import logging
import os
import pathlib
import subprocess
import sys

import schemas
from filters.synthetic import make_candidates
from pipeline.runners import BEAM_BIGQUERY_NOTICE, BeamImportNoiseFilter, quiet_beam_import_noise

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}
NOTICE = "apitools not found"


def _record(msg, name="root", level=logging.WARNING):
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_filter_drops_only_the_bigquery_notice():
    noise = BeamImportNoiseFilter()
    assert not noise.filter(_record(BEAM_BIGQUERY_NOTICE + " despite the import not raising an ImportError."))
    assert noise.filter(_record("apitools is fine, but the disk is full"))
    assert noise.filter(_record("bigquery client libraries are not available"))  # not the same line
    assert noise.filter(_record("%s rows rejected", name="pipeline.filter"))


def test_installed_on_the_root_logger_once(caplog):
    quiet_beam_import_noise()
    quiet_beam_import_noise()
    assert sum(isinstance(f, BeamImportNoiseFilter) for f in logging.getLogger().filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.warning(BEAM_BIGQUERY_NOTICE + " despite the import not raising an ImportError.")
        logging.warning("a real warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_a_real_filter_run_has_no_notice_but_real_warnings_pass(tmp_path):
    with schemas.ShardWriter(str(tmp_path / "crawl" / "candidates"), "candidates") as writer:
        writer.write_many(make_candidates(6, seed=5, distinct_images=6))
    # The control: Beam still logs the notice on a bare import, so its absence below means something.
    bare = subprocess.run([sys.executable, "-c", "import apache_beam"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert NOTICE in bare.stderr
    script = (
        "import logging, sys\n"
        "from lait import cli\n"
        f"status = cli.main(['filter', '--input', {str(tmp_path / 'crawl')!r}, '--output', "
        f"{str(tmp_path / 'filter')!r}, '--vocab', 'none'])\n"
        "logging.warning('a real root warning')\n"
        "logging.getLogger('apache_beam.io').warning('a real beam warning')\n"
        "sys.exit(status)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "filter" / "stats.json").exists()
    assert NOTICE not in run.stderr
    assert "a real root warning" in run.stderr and "a real beam warning" in run.stderr
