"""The Python versions Stacklab says it supports are the ones its pinned packages install on.

A newcomer on stock Debian 12 has Python 3.11.2: a pin that needs a later 3.11 (as
pymdown-extensions 13.x does, >= 3.11.5) stops `make run` at `pip install` while the README and
scripts/ensure-python.sh accept any 3.11. CI also builds its venv with the machine's
/usr/bin/python3, which proves the pins install there; these tests say why, without a network.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def oldest_supported_python() -> Version:
    """The lowest version pyproject.toml's requires-python admits (">=3.11" -> 3.11.0)."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)(?:\.(\d+))?", requires.strip())
    assert match, f"requires-python should be a plain lower bound, not {requires!r}"
    major, minor, micro = match.groups()
    return Version(f"{major}.{minor}.{micro or 0}")


def pinned_distributions() -> list[str]:
    names = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Requirement(line).name)
    return names


def test_every_installed_package_supports_the_oldest_python_we_accept() -> None:
    """Pins and their dependencies, as installed in this venv, all admit e.g. Debian 12's 3.11.2."""
    oldest = oldest_supported_python()
    refusing = []
    for name in pinned_distributions():
        seen = {name.lower()}
        todo = [name]
        while todo:
            dist = metadata.distribution(todo.pop())
            requires_python = dist.metadata.get("Requires-Python")
            if requires_python and oldest not in SpecifierSet(requires_python):
                refusing.append(f"{dist.metadata['Name']} {dist.version} needs Python {requires_python}")
            for requirement in map(Requirement, dist.requires or []):
                if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                    continue
                key = requirement.name.lower()
                if key not in seen:
                    seen.add(key)
                    try:
                        metadata.distribution(requirement.name)
                    except metadata.PackageNotFoundError:
                        continue  # a dependency of another platform or Python, not installed here
                    todo.append(requirement.name)
    assert not refusing, f"pinned packages refuse Python {oldest}, which Stacklab claims to support: {refusing}"


def test_the_setup_check_accepts_exactly_what_pyproject_declares() -> None:
    """scripts/ensure-python.sh refuses older Pythons with the same bound pyproject.toml states."""
    oldest = oldest_supported_python()
    script = (ROOT / "scripts" / "ensure-python.sh").read_text()
    bound = re.search(r"sys\.version_info < \((\d+), (\d+)(?:, (\d+))?\)", script)
    assert bound, "ensure-python.sh should compare sys.version_info with a tuple"
    major, minor, micro = bound.groups()
    assert Version(f"{major}.{minor}.{micro or 0}") == oldest
    assert f"{oldest.major}.{oldest.minor}" in (ROOT / "README.md").read_text()
