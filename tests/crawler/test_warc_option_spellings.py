"""`python -m crawler.warc` takes each of its options in both spellings: `--files_per_part` (its own, documented)
and `--files-per-part` (as `lait crawl --warc` spells it). Before, the hyphenated one was passed on to Beam, which
knew it not: the run stopped with "unknown argument(s)"."""
import pytest

from crawler import warc

REQUIRED = ["--input", "a.warc.gz", "--output", "out"]


@pytest.mark.parametrize("option, value", [
    ("files_per_part", "3"), ("min_side", "64"), ("max_aspect", "2.5"), ("image_formats", "png"),
    ("max_pixels", "1000"), ("max_bytes", "2048"), ("download_delay", "0.5"), ("download_timeout", "7"),
    ("user_agent", "-MyLab/1.0"), ("robots_retry_after", "60"),
])
def test_an_option_in_either_spelling_reads_the_same(option, value):
    parser = warc.build_parser()
    underscore, rest = parser.parse_known_args([*REQUIRED, f"--{option}={value}"])
    hyphen, rest_hyphen = parser.parse_known_args([*REQUIRED, f"--{option.replace('_', '-')}={value}"])
    assert rest == rest_hyphen == []  # nothing left for Beam to refuse
    assert vars(hyphen) == vars(underscore)
    assert vars(underscore) != vars(parser.parse_known_args(REQUIRED)[0])  # the value was taken


@pytest.mark.parametrize("option", ["allow_private_networks", "no_download"])
def test_a_flag_in_either_spelling_reads_the_same(option):
    parser = warc.build_parser()
    underscore = parser.parse_known_args([*REQUIRED, f"--{option}"])
    hyphen = parser.parse_known_args([*REQUIRED, f"--{option.replace('_', '-')}"])
    assert hyphen == underscore and getattr(hyphen[0], option) is True and hyphen[1] == []


def test_every_underscore_option_has_its_hyphenated_spelling():
    strings = {s for action in warc.build_parser()._actions for s in action.option_strings}
    assert {s.replace("_", "-") for s in strings} <= strings


def test_the_hyphenated_spelling_is_checked_as_the_other(tmp_path, capsys):
    """A bad value is refused by the same rule, before anything is read (exit status 2, one line)."""
    with pytest.raises(SystemExit) as exit_:
        warc.run(["--input", str(tmp_path / "a.warc.gz"), "--output", str(tmp_path / "out"), "--files-per-part",
                  "-1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: --files_per_part must be 0 or more, got -1" in err, err
    assert not (tmp_path / "out").exists()
