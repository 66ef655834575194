"""constraints.txt against setup.py: the frozen resolution must be one that setup.py's ranges allow.

The Makefile installs every fresh .venv with ``--constraint constraints.txt``. A range changed in setup.py without
refreshing the pins (``make constraints``) would make that install fail on a fresh machine, or pin a version
LAIT no longer supports; these checks catch it before CI's fresh clone does.
"""
import ast
import pathlib
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parent.parent


def setup_requirements() -> dict[str, Requirement]:
    """setup.py's ``REQ`` table, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQ" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {canonicalize_name(Requirement(spec).name): Requirement(spec) for spec in table.values()}
    raise AssertionError("setup.py has no REQ table")


def parse_constraints(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"constraints.txt line {number} is not NAME==VERSION: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice (line {number})"
        pins[name] = Version(match.group(2))
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    return parse_constraints((ROOT / "constraints.txt").read_text(encoding="utf-8"))


def test_every_direct_dependency_is_pinned_inside_its_setup_py_range(pins):
    requirements = setup_requirements()
    missing = sorted(name for name in requirements if name not in pins)
    assert not missing, f"constraints.txt lacks {missing}: run `make constraints`"
    outside = {name: f"{pins[name]} not in {req.specifier}" for name, req in requirements.items()
               if not req.specifier.contains(pins[name], prereleases=True)}
    assert not outside, f"pins outside setup.py's ranges (run `make constraints`): {outside}"


def test_torch_pins_are_the_exact_versions_setup_py_names(pins):
    requirements = setup_requirements()
    for name in ("torch", "torchvision"):
        (spec,) = requirements[name].specifier
        assert spec.operator == "==" and pins[name] == Version(spec.version)


def test_lait_itself_and_the_installer_are_not_pinned(pins):
    # LAIT is installed from the checkout (editable); pinning it would make pip look for it on the index.
    assert "lait" not in pins
    assert not {"pip", "setuptools", "wheel"} & set(pins)


def test_the_parser_refuses_what_pip_would_read_differently():
    with pytest.raises(AssertionError, match="line 2"):
        parse_constraints("numpy==2.4.6\nnumpy>=2\n")
    with pytest.raises(AssertionError, match="twice"):
        parse_constraints("Pillow==12.3.0\npillow==12.2.0\n")
    assert parse_constraints("# comment\n\nPyYAML==6.0.4\n") == {"pyyaml": Version("6.0.4")}
