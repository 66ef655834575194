"""The language identifier's word table and Han table are built once per machine, not once per process: kept in
LAIT's cache folder (``LAIT_CACHE_DIR``), read back equal, built again when the kept one is damaged, and not needed
at all."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from filters import language

LANGS = ("en", "de")  # two lists: a table of the same form as the default's 27, built in a fraction of the time
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAIT_CACHE_DIR", str(tmp_path / "cache"))
    language._word_table.cache_clear()
    yield tmp_path / "cache"
    language._word_table.cache_clear()


def _kept(cache) -> list[str]:
    return sorted(name for name in os.listdir(cache) if name.startswith("word-table-"))


def test_the_table_is_kept_and_read_back_equal(cache):
    built_rows, built = language._build_word_table(LANGS)
    rows, matrix = language._word_table(LANGS)
    assert len(_kept(cache)) == 1 and sorted(os.listdir(cache / _kept(cache)[0])) == ["matrix.npy", "words.txt"]
    language._word_table.cache_clear()  # as a new process: read from the cache folder
    read_rows, read = language._word_table(LANGS)
    assert isinstance(read, np.memmap) and not isinstance(matrix, np.memmap)
    assert read_rows == rows == built_rows
    np.testing.assert_array_equal(read, built)
    words = language.WordFrequencyIdentifier(dict(zip(LANGS, LANGS)))
    assert max(words.predict("the children are playing in the garden").items(), key=lambda kv: kv[1])[0] == "en"
    assert max(words.predict("die Kinder spielen im Garten").items(), key=lambda kv: kv[1])[0] == "de"


def test_a_damaged_table_is_built_again_with_a_warning(cache, caplog):
    rows, matrix = language._word_table(LANGS)
    kept = cache / _kept(cache)[0]
    words = (kept / "words.txt").read_text(encoding="utf-8").split("\n")
    (kept / "words.txt").write_text("\n".join(words[:-5]), encoding="utf-8")  # cut short
    language._word_table.cache_clear()
    with caplog.at_level(logging.WARNING, logger="filters.language"):
        again_rows, again = language._word_table(LANGS)
    assert again_rows == rows and not isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, matrix)
    assert any("cannot be read" in r.getMessage() and "building it again" in r.getMessage() for r in caplog.records)


def test_a_cache_folder_that_cannot_be_made_is_no_error(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setenv("LAIT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    language._word_table.cache_clear()
    try:
        rows, matrix = language._word_table(LANGS)
    finally:
        language._word_table.cache_clear()
    assert len(rows) == matrix.shape[0] > 1000
    assert os.listdir(tmp_path) == ["a-file"]


def test_the_cache_folder_follows_the_environment(tmp_path):
    script = "from filters.language import cache_dir; print(cache_dir())"
    env = {key: value for key, value in os.environ.items() if key not in ("LAIT_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=REPO, HOME=str(tmp_path))
    found = [subprocess.run([sys.executable, "-c", script], env=dict(env, **extra), capture_output=True, text=True,
                            check=True).stdout.strip()
             for extra in ({}, {"XDG_CACHE_HOME": "/x"}, {"LAIT_CACHE_DIR": "/y"})]
    assert found == [str(tmp_path / ".cache" / "lait"), "/x/lait", "/y"]


def test_the_han_table_is_kept_read_back_equal_and_built_again_when_damaged(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LAIT_CACHE_DIR", str(tmp_path / "cache"))
    language._han_table.cache_clear()
    try:
        built = language._han_table()
        kept = [name for name in os.listdir(tmp_path / "cache") if name.startswith("han-table-")]
        assert len(kept) == 1 and kept[0].endswith(".json")
        language._han_table.cache_clear()  # as a new process
        assert language._han_table() == built == language._build_han_table()
        (tmp_path / "cache" / kept[0]).write_text('{"字": "x"}', encoding="utf-8")
        language._han_table.cache_clear()
        with caplog.at_level(logging.WARNING, logger="filters.language"):
            assert language._han_table() == built
        assert any("Han table" in r.getMessage() and "building it again" in r.getMessage() for r in caplog.records)
    finally:
        language._han_table.cache_clear()


def test_a_han_table_that_cannot_be_kept_costs_only_time(tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setenv("LAIT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    language._han_table.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="filters.language"):
            table = language._han_table()
    finally:
        language._han_table.cache_clear()
    assert len(table) > 1000 and table["们"] < 0 < table["駅"]  # Chinese's 们, Japanese's 駅
    assert os.listdir(tmp_path) == ["a-file"] and not caplog.records  # nothing kept, nothing to warn of


def test_a_han_table_write_that_fails_leaves_no_half_written_file(tmp_path, monkeypatch):
    """A full disk while the table is written: it is not kept, and no temporary file is left beside the tables."""
    monkeypatch.setenv("LAIT_CACHE_DIR", str(tmp_path))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(language.json, "dump", full_disk)
    language._han_table.cache_clear()
    try:
        assert len(language._han_table()) > 1000
    finally:
        language._han_table.cache_clear()
    assert os.listdir(tmp_path) == []
