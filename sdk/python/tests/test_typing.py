"""The package is typed (PEP 561): mypy finds no error in it, and every
public name has a docstring."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import ferry

PACKAGE = Path(ferry.__file__).resolve().parent
# The package's sources in this tree (the installed copy is the same code;
# mypy refuses a path inside site-packages as a source root).
SOURCES = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error() -> None:
    assert (PACKAGE / "py.typed").exists() and (SOURCES / "ferry" / "py.typed").exists()
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(SOURCES / "pyproject.toml"), str(SOURCES / "ferry")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in ferry.__all__:
        value = getattr(ferry, name)
        if not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            for member, attribute in vars(value).items():
                if member.startswith("_") or not callable(attribute) and not isinstance(attribute, property):
                    continue
                if not inspect.getdoc(attribute):
                    missing.append(f"{name}.{member}")
    assert not missing, f"no docstring: {', '.join(missing)}"
