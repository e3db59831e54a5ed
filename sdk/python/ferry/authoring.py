"""Pipelines as decorated Python functions, compiled to Ferry's pipeline spec
(the YAML the coordinator validates, the one contract).

    @ferry.step(outputs=["train.csv", "test.csv"], resources=ferry.Resources(cpu=1, memory="512Mi"))
    def split(seed: int = 42): ...

    @ferry.step(outputs=["model.json"], matrix={"k": [1, 5, 15]}, max_parallel=2)
    def train(train_csv: ferry.Input["split/train.csv"], k: int): ...

    @ferry.pipeline(name="iris")
    def iris(seed: int = 42):
        s = split(seed=seed)
        train(train_csv=s.outputs["train.csv"], k=ferry.matrix_value("k"))

Calling the pipeline function under :func:`compile` records each step call;
each step runs on a worker as ``python3 -m ferry.run MODULE:FUNCTION NAME=VALUE
...``, which passes inputs as :class:`pathlib.Path` and parameters converted
to their annotated types. Outside a compilation a step function is a plain
function (call it to test it locally).
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .errors import SpecError

__all__ = [
    "Resources",
    "Gpu",
    "Input",
    "Gather",
    "OutputRef",
    "StepCall",
    "StepFunction",
    "PipelineFunction",
    "step",
    "pipeline",
    "matrix_value",
    "compile",
    "log_metric",
    "module_of",
]

#: The types a step's parameters may be annotated with (and converted to on the worker).
SCALARS = (int, float, bool, str)


@dataclass(frozen=True)
class Gpu:
    """A GPU request: how many, and optionally which model and how much memory each."""

    count: int = 1
    model: Optional[str] = None
    min_memory: Optional[str] = None


@dataclass(frozen=True)
class Resources:
    """What a step needs: CPU cores, memory (``"512Mi"``, ``"2Gi"``), GPUs (a
    count, or a :class:`Gpu` with model and memory constraints)."""

    cpu: Optional[float] = None
    memory: Optional[str] = None
    gpu: Union[None, int, Gpu] = None

    def _spec(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.cpu is not None:
            out["cpu"] = self.cpu
        if self.memory is not None:
            out["memory"] = self.memory
        if isinstance(self.gpu, Gpu):
            gpu: Dict[str, Any] = {"count": self.gpu.count}
            if self.gpu.model is not None:
                gpu["model"] = self.gpu.model
            if self.gpu.min_memory is not None:
                gpu["min_memory"] = self.gpu.min_memory
            out["gpu"] = gpu
        elif self.gpu is not None:
            out["gpu"] = self.gpu
        return out


@dataclass(frozen=True)
class _InputAnnotation:
    ref: str


class Input:
    """Annotates a step parameter as an input file: ``ferry.Input["split/train.csv"]``
    (``STEP/OUTPUT``). On the worker the parameter is the staged file's
    :class:`pathlib.Path`."""

    def __class_getitem__(cls, ref: str) -> Any:
        if not isinstance(ref, str) or "/" not in ref:
            raise TypeError(f'ferry.Input[...] takes "STEP/OUTPUT", got {ref!r}')
        return _InputAnnotation(ref)


@dataclass(frozen=True)
class _GatherAnnotation:
    step: str


class Gather:
    """Annotates a step parameter as a gathered sweep: ``ferry.Gather["train"]``
    (the step needs ``gather=[{"step": "train", ...}]``). On the worker the
    parameter is the :class:`pathlib.Path` of the folder holding every trial's
    outputs (``TRIAL/OUTPUT``) and ``trials.json``."""

    def __class_getitem__(cls, step: str) -> Any:
        if not isinstance(step, str) or not step:
            raise TypeError(f'ferry.Gather[...] takes a step name, got {step!r}')
        return _GatherAnnotation(step)


@dataclass(frozen=True)
class OutputRef:
    """An output of a step call, to pass as another step's input."""

    step: str
    name: str

    def __str__(self) -> str:
        return f"{self.step}/{self.name}"


@dataclass(frozen=True)
class _Param:
    name: str


@dataclass(frozen=True)
class _MatrixValue:
    name: str


def matrix_value(name: str) -> Any:
    """The value of the step's matrix key ``name`` in each trial of a sweep."""
    return _MatrixValue(name)


class _Outputs(Mapping[str, OutputRef]):
    def __init__(self, call: "StepCall") -> None:
        self._call = call

    def __getitem__(self, name: str) -> OutputRef:
        declared = self._call.function.outputs
        if name not in declared:
            raise SpecError(
                f"{self._call.name}: output {name!r} is not declared{_did_you_mean(name, declared)} "
                f"(outputs: {', '.join(declared) or 'none'})"
            )
        return OutputRef(self._call.name, name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._call.function.outputs)

    def __len__(self) -> int:
        return len(self._call.function.outputs)


class StepCall:
    """A step function called inside a pipeline: a step of the compiled spec."""

    def __init__(self, function: "StepFunction", name: str, arguments: Dict[str, Any], needs: List[str]) -> None:
        #: The step function.
        self.function = function
        #: The step's name in the spec.
        self.name = name
        #: The arguments it was called with.
        self.arguments = arguments
        #: The steps it was told to wait for (besides its inputs').
        self.needs = needs
        #: Its outputs, by name: pass one as another step's input.
        self.outputs: Mapping[str, OutputRef] = _Outputs(self)


class _Compilation:
    def __init__(self, pipeline: "PipelineFunction") -> None:
        self.pipeline = pipeline
        self.calls: List[StepCall] = []


_ACTIVE: List[_Compilation] = []


class StepFunction:
    """A function decorated with :func:`step`."""

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        self.name: str = options.pop("name", None) or fn.__name__
        self.outputs: Tuple[str, ...] = tuple(options.pop("outputs", ()) or ())
        self.options = options
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__module__ = fn.__module__
        self.__qualname__ = fn.__qualname__
        hints = _annotations(fn)
        for parameter in self.signature.parameters.values():
            hint = hints.get(parameter.name, parameter.annotation)
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise SpecError(f"{self.name}: *args and **kwargs are not supported in a step ({parameter})")
            if (
                not isinstance(hint, (_InputAnnotation, _GatherAnnotation))
                and hint not in SCALARS
                and hint is not inspect.Parameter.empty
            ):
                raise SpecError(
                    f"{self.name}: parameter {parameter.name} is annotated {hint!r}; a step takes "
                    "int, float, bool, str, ferry.Input[\"STEP/OUTPUT\"] or ferry.Gather[\"STEP\"]"
                )

    def __call__(self, *args: Any, needs: Sequence[Union[str, StepCall]] = (), **kwargs: Any) -> Any:
        if not _ACTIVE:
            return self.fn(*args, **kwargs)
        if args:
            raise SpecError(f"{self.name}: pass a step's arguments by name inside a pipeline")
        compilation = _ACTIVE[-1]
        if any(call.name == self.name for call in compilation.calls):
            raise SpecError(
                f"{compilation.pipeline.name}: step {self.name} is called twice; "
                f"decorate another function, or give one call its own name with @ferry.step(name=...)"
            )
        call = StepCall(self, self.name, dict(kwargs), [n.name if isinstance(n, StepCall) else n for n in needs])
        compilation.calls.append(call)
        return call


def step(
    fn: Optional[Callable[..., Any]] = None,
    *,
    name: Optional[str] = None,
    outputs: Sequence[str] = (),
    resources: Optional[Resources] = None,
    matrix: Optional[Mapping[str, Sequence[Any]]] = None,
    max_parallel: Optional[int] = None,
    image: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    retries: Optional[int] = None,
    timeout: Optional[str] = None,
    cache: Union[None, bool, Mapping[str, Any]] = None,
    gather: Optional[Sequence[Mapping[str, Any]]] = None,
    python: str = "python3",
) -> Any:
    """Declares a function as a pipeline step. ``outputs`` are the files it
    writes in its work directory; ``matrix`` makes it a sweep (one trial per
    combination, read with :func:`matrix_value`); ``gather`` receives every
    trial of sweeps (``[{"step": "train", "best": "accuracy", "goal": "max"}]``);
    ``resources``, ``image``, ``env``, ``retries``, ``timeout`` (``"10m"``) and
    ``cache`` (``False``, or ``{"paths": [...]}``) are the spec's fields of the
    same names; ``python`` is the interpreter the worker starts (it must have
    ferry-sdk installed)."""
    options = dict(
        name=name, outputs=outputs, resources=resources, matrix=matrix, max_parallel=max_parallel, image=image,
        env=env, retries=retries, timeout=timeout, cache=cache, gather=gather, python=python,
    )

    def wrap(function: Callable[..., Any]) -> StepFunction:
        return StepFunction(function, **options)

    return wrap(fn) if fn is not None else wrap


class PipelineFunction:
    """A function decorated with :func:`pipeline`: its parameters (with
    defaults) are the pipeline's parameters; its body calls steps."""

    def __init__(self, fn: Callable[..., Any], name: Optional[str], image: Optional[str]) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.image = image
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__module__ = fn.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"pipeline {self.name} is not called directly: ferry.compile({self.fn.__name__}) gives its spec, "
            f"client.submit({self.fn.__name__}) runs it"
        )


def pipeline(fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, image: Optional[str] = None) -> Any:
    """Declares a pipeline: a function whose body calls steps. Its parameters,
    each with a default, become the pipeline's parameters (``params=`` of
    ``client.submit`` overrides them)."""

    def wrap(function: Callable[..., Any]) -> PipelineFunction:
        return PipelineFunction(function, name, image)

    return wrap(fn) if fn is not None else wrap


def module_of(fn: Callable[..., Any]) -> Tuple[Path, str]:
    """The folder to bundle for ``fn`` and its module's name relative to it:
    the folder of its file, or above its top-level package."""
    source = inspect.getsourcefile(fn)
    if source is None:
        raise SpecError(f"{getattr(fn, '__name__', fn)}: defined outside a file (a notebook cell?); put it in a module")
    path = Path(source).resolve()
    folder = path.parent
    parts = [path.stem]
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)


def compile(pipeline: PipelineFunction, params: Optional[Mapping[str, Any]] = None) -> str:  # noqa: A001
    """The pipeline's spec as YAML (what ``client.submit`` sends). Mistakes
    raise :class:`ferry.SpecError` naming the function and parameter."""
    return yaml.safe_dump(_compile(pipeline, params), sort_keys=False, allow_unicode=True)


def _compile(pipeline: PipelineFunction, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if not isinstance(pipeline, PipelineFunction):
        raise SpecError(f"{pipeline!r} is not a @ferry.pipeline function")
    signature = inspect.signature(pipeline.fn)
    spec_params: Dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.default is inspect.Parameter.empty:
            raise SpecError(f"{pipeline.name}: parameter {parameter.name} needs a default (the pipeline's default value)")
        spec_params[parameter.name] = _scalar(parameter.default, f"{pipeline.name}: parameter {parameter.name}")
    for key in params or {}:
        if key not in spec_params:
            raise SpecError(f"{pipeline.name}: no parameter {key!r}{_did_you_mean(key, spec_params)}")
    compilation = _Compilation(pipeline)
    _ACTIVE.append(compilation)
    try:
        pipeline.fn(**{name: _Param(name) for name in spec_params})
    finally:
        _ACTIVE.pop()
    if not compilation.calls:
        raise SpecError(f"{pipeline.name}: calls no step")
    steps = [_step_spec(call, compilation, spec_params) for call in compilation.calls]
    _check_acyclic(pipeline.name, steps)
    spec: Dict[str, Any] = {"name": pipeline.name}
    if spec_params:
        spec["params"] = spec_params
    if pipeline.image:
        spec["image"] = pipeline.image
    spec["steps"] = steps
    return spec


def _step_spec(call: StepCall, compilation: _Compilation, pipeline_params: Mapping[str, Any]) -> Dict[str, Any]:
    function = call.function
    label = function.name
    declared = {c.name: c for c in compilation.calls}
    hints = _annotations(function.fn)
    matrix = dict(function.options.get("matrix") or {})
    arguments: List[str] = []
    inputs: Dict[str, str] = {}
    for parameter in function.signature.parameters.values():
        hint = hints.get(parameter.name, parameter.annotation)
        given = call.arguments.get(parameter.name, inspect.Parameter.empty)
        where = f"{label}: parameter {parameter.name}"
        if isinstance(hint, _InputAnnotation):
            ref = given if given is not inspect.Parameter.empty else hint.ref
            text = str(ref)
            step_name, _, output = text.partition("/")
            if step_name not in declared or step_name == label:
                raise SpecError(
                    f"{label}: input {parameter.name} refers to {text}, but {step_name} is not a step called before "
                    f"{label}{_did_you_mean(step_name, [c for c in declared if c != label])}"
                )
            outputs = declared[step_name].function.outputs
            if output not in outputs:
                raise SpecError(
                    f"{label}: input {parameter.name} refers to {text}, which {step_name} does not declare"
                    f"{_did_you_mean(output, outputs)}"
                )
            inputs[parameter.name] = text
            continue
        if isinstance(hint, _GatherAnnotation):
            gathered = [g.get("step") for g in function.options.get("gather") or ()]
            if hint.step not in gathered:
                raise SpecError(
                    f"{where} gathers {hint.step}, but the step's gather= names "
                    f"{', '.join(map(str, gathered)) or 'nothing'}"
                )
            continue
        if given is inspect.Parameter.empty:
            if parameter.default is inspect.Parameter.empty:
                raise SpecError(f"{where} is not given and has no default")
            continue
        if isinstance(given, OutputRef):
            raise SpecError(f"{where} is given the output {given}; annotate it ferry.Input[\"{given}\"] to take a file")
        if isinstance(given, _Param):
            value = "${params." + given.name + "}"
        elif isinstance(given, _MatrixValue):
            if given.name not in matrix:
                raise SpecError(
                    f"{where} takes matrix value {given.name!r}, which is not in the step's matrix"
                    f"{_did_you_mean(given.name, matrix)}"
                )
            value = "${matrix." + given.name + "}"
        else:
            value = _text(_scalar(given, where))
        arguments.append(f"{parameter.name}={value}")
    for key in call.arguments:
        if key not in function.signature.parameters:
            raise SpecError(f"{label}: no parameter {key!r}{_did_you_mean(key, function.signature.parameters)}")
    unused = set(matrix) - {a.split("=", 1)[1][len("${matrix."):-1] for a in arguments if "=${matrix." in a}
    if unused:
        raise SpecError(f"{label}: matrix key(s) {', '.join(sorted(unused))} are not passed to any parameter (use ferry.matrix_value)")
    folder, module = module_of(function.fn)
    spec: Dict[str, Any] = {"name": label}
    needs = [n for n in call.needs if n not in {i.split("/")[0] for i in inputs.values()}]
    if needs:
        spec["needs"] = needs
    if inputs:
        spec["inputs"] = inputs
    if function.options.get("gather"):
        spec["gather"] = [dict(g) for g in function.options["gather"]]
    if matrix:
        spec["matrix"] = {k: [_scalar(v, f"{label}: matrix {k}") for v in values] for k, values in matrix.items()}
    if function.options.get("max_parallel") is not None:
        spec["max_parallel"] = function.options["max_parallel"]
    spec["command"] = [function.options.get("python") or "python3", "-m", "ferry.run", f"{module}:{function.fn.__name__}", *arguments]
    if function.outputs:
        spec["outputs"] = list(function.outputs)
    for key in ("env", "retries", "timeout", "image"):
        if function.options.get(key) is not None:
            spec[key] = dict(function.options[key]) if key == "env" else function.options[key]
    cache = function.options.get("cache")
    if cache is not None:
        spec["cache"] = cache if isinstance(cache, bool) else dict(cache)
    resources = function.options.get("resources")
    if resources is not None and resources._spec():
        spec["resources"] = resources._spec()
    return spec


def _check_acyclic(pipeline: str, steps: List[Dict[str, Any]]) -> None:
    names = {s["name"] for s in steps}
    edges: Dict[str, List[str]] = {}
    for s in steps:
        deps = list(s.get("needs", [])) + [ref.split("/")[0] for ref in s.get("inputs", {}).values()]
        deps += [g["step"] for g in s.get("gather", []) if "step" in g]
        for dep in deps:
            if dep not in names:
                raise SpecError(f"{s['name']}: needs {dep}, which is not a step of {pipeline}{_did_you_mean(dep, names)}")
        edges[s["name"]] = deps
    state: Dict[str, int] = {}
    path: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in edges[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise SpecError(f"{pipeline}: the steps form a cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in edges:
        if name not in state:
            visit(name)


def _annotations(fn: Callable[..., Any]) -> Dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        return {k: v for k, v in getattr(fn, "__annotations__", {}).items()}


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{where}: {value} is not a finite number")
        return value
    raise SpecError(f"{where}: {value!r} is a {type(value).__name__}; a value is an int, float, bool or str")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def log_metric(name: str, value: float, step: Optional[int] = None) -> None:
    """Reports a metric from inside a step (appends to ``FERRY_METRICS``);
    outside a step it prints the metric instead."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric {name}: {value} is not a finite number")
    record: Dict[str, Any] = {"name": name, "value": value}
    if step is not None:
        record["step"] = int(step)
    target = os.environ.get("FERRY_METRICS")
    if not target:
        print(f"metric {json.dumps(record)}", file=sys.stderr)
        return
    with open(target, "a") as out:
        out.write(json.dumps(record) + "\n")
