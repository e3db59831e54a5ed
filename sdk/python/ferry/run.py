"""The runner of a Python step on a worker:
``python -m ferry.run MODULE:FUNCTION [NAME=VALUE ...]``.

Imports the function from the code bundle (the work directory), passes each
input parameter the staged file's :class:`pathlib.Path` (``FERRY_INPUT_NAME``)
and each other parameter its value converted to the annotated type, and calls
it. An exception prints its traceback and exits 1."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

from .authoring import StepFunction, _annotations, _GatherAnnotation, _InputAnnotation

__all__ = ["main", "convert"]


def convert(text: str, hint: Any, where: str) -> Any:
    """``text`` as the annotated type (int, float, bool, str; unannotated: str)."""
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: {text!r} is not a bool (true or false)")
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text


def main(argv: List[str]) -> int:
    """Runs the step named by ``argv``; returns the exit code."""
    if not argv or ":" not in argv[0]:
        print("usage: python -m ferry.run MODULE:FUNCTION [NAME=VALUE ...]", file=sys.stderr)
        return 2
    module_name, _, function_name = argv[0].partition(":")
    sys.path.insert(0, os.getcwd())
    target = getattr(importlib.import_module(module_name), function_name)
    fn = target.fn if isinstance(target, StepFunction) else target
    given: Dict[str, str] = {}
    for pair in argv[1:]:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"ferry.run: argument {pair!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        given[name] = value
    hints = _annotations(fn)
    kwargs: Dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        hint = hints.get(parameter.name, parameter.annotation)
        if isinstance(hint, _InputAnnotation):
            variable = f"FERRY_INPUT_{parameter.name.upper()}"
            if variable not in os.environ:
                print(f"ferry.run: input {parameter.name} was not staged ({variable} is not set)", file=sys.stderr)
                return 2
            kwargs[parameter.name] = Path(os.environ[variable])
        elif isinstance(hint, _GatherAnnotation):
            variable = f"FERRY_GATHER_{hint.step.upper()}"
            if variable not in os.environ:
                print(f"ferry.run: sweep {hint.step} was not gathered ({variable} is not set)", file=sys.stderr)
                return 2
            kwargs[parameter.name] = Path(os.environ[variable])
        elif parameter.name in given:
            kwargs[parameter.name] = convert(given[parameter.name], hint, f"{function_name}: {parameter.name}")
    fn(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
