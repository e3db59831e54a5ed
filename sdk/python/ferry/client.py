"""The connection to a Ferry cluster, and runs seen from Python."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import blake3
import grpc

from . import errors
from .config import ClientConfig, PathLike, parse_address
from .v1 import ferry_pb2 as pb
from .v1 import ferry_pb2_grpc as pb_grpc

__all__ = [
    "Client",
    "Run",
    "RunSummary",
    "RunStatus",
    "Step",
    "Attempt",
    "LogLine",
    "Artifact",
    "Metric",
    "Worker",
    "Comparison",
    "LineageNode",
    "Schedule",
]

#: Bytes per chunk of a bundle upload (the CLI's chunk size).
CHUNK_BYTES = 256 * 1024
#: The largest answer accepted (a big run's view, a page of steps).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Submissions per message of a ``submit_many`` stream: gRPC's cost per
#: message is paid once for this many.
SUBMIT_BATCH = 256
#: The metadata key of a call's id, the same on every retry of the call.
REQUEST_ID_HEADER = "ferry-request-id"

T = TypeVar("T")

_FAILOVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: What gRPC's messages say when the TLS handshake itself failed.
_TLS_FAILURE_MARKS = ("TSI_", "SSL", "ssl", "handshake", "CERTIFICATE", "certificate")


class Client:
    """A connection to a Ferry cluster over mutually authenticated gRPC.

    With no arguments it reads the configuration the ``ferry`` CLI reads
    (``FERRY_CONFIG`` / ``FERRY_COORDINATOR`` / ``FERRY_CA`` / ``FERRY_CERT`` /
    ``FERRY_KEY``, then ``~/.config/ferry/config.toml`` as ``ferry dev`` writes
    it). ``coordinator`` may name several members (a list, or ``"a:1,b:2"``):
    they are tried in order, and a call that finds its member gone is sent
    again to the next (every call the SDK makes is safe to repeat).
    """

    def __init__(
        self,
        coordinator: Union[None, str, Sequence[str]] = None,
        *,
        ca: Optional[PathLike] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        config: Optional[PathLike] = None,
        timeout: float = 30.0,
    ) -> None:
        self.config = ClientConfig.resolve(coordinator, ca=ca, cert=cert, key=key, config=config)
        #: Seconds each call may take before it is given up (per member tried).
        self.timeout = timeout
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.config.ca, "CA certificate"),
            private_key=_read_pem(self.config.key, "private key"),
            certificate_chain=_read_pem(self.config.cert, "certificate"),
        )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channels: List[grpc.Channel] = []
        for address in self.config.coordinators:
            target, _host = parse_address(address)
            self._channels.append(grpc.secure_channel(target, credentials, options=options))
        self._stubs = [pb_grpc.ControlStub(channel) for channel in self._channels]
        self._current = 0
        # Packed bundles by folder, with the signature of the files they were
        # packed from, and the digests the cluster is known to hold: a loop of
        # submissions of one folder packs and uploads it once.
        self._lock = threading.Lock()
        self._packed: Dict[str, Tuple[Any, Any]] = {}
        self._stored: set = set()

    # ----------------------------------------------------------- plumbing

    def close(self) -> None:
        """Closes the connections (also done when used as a context manager)."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, timeout: Optional[float] = None, write: bool = False) -> Any:
        """Calls ``method`` on the first member that answers, starting with the
        one that answered last; a refusal is raised as the SDK's exception."""
        metadata = [(REQUEST_ID_HEADER, uuid.uuid4().hex)] if write else None
        failures: List[str] = []
        count = len(self._stubs)
        for offset in range(count):
            index = (self._current + offset) % count
            address = self.config.coordinators[index]
            try:
                answer = getattr(self._stubs[index], method)(
                    request, timeout=timeout or self.timeout, metadata=metadata
                )
            except grpc.RpcError as error:
                if error.code() in _FAILOVER:
                    failures.append(f"{address}: {error.details()}")
                    continue
                raise errors.from_rpc_error(error, address) from None
            self._current = index
            return answer
        raise self._none_answered(failures)

    def _none_answered(self, failures: List[str]) -> errors.FerryError:
        """The error when no member answered: a refused TLS handshake is a
        refusal of the client's certificate (or of the server's by the CA
        given), anything else an outage."""
        tls = [f for f in failures if any(mark in f for mark in _TLS_FAILURE_MARKS)]
        if tls:
            return errors.PermissionDenied(
                "the TLS handshake failed (" + "; ".join(tls) + "): the coordinator did not accept the "
                f"client certificate {self.config.cert} (it must be issued by the cluster's CA and not "
                f"revoked), or its own certificate does not verify against the CA {self.config.ca}"
            )
        return errors.Unavailable(
            "no coordinator answered: " + "; ".join(failures),
            list(self.config.coordinators),
        )

    def _stream(self, method: str, request: Any, timeout: Optional[float] = None) -> Iterator[Any]:
        """A server-streaming call on the first member that starts answering."""
        failures: List[str] = []
        count = len(self._stubs)
        for offset in range(count):
            index = (self._current + offset) % count
            address = self.config.coordinators[index]
            stream = getattr(self._stubs[index], method)(request, timeout=timeout)
            try:
                first = next(stream)
            except StopIteration:
                self._current = index
                return
            except grpc.RpcError as error:
                if error.code() in _FAILOVER:
                    failures.append(f"{address}: {error.details()}")
                    continue
                raise errors.from_rpc_error(error, address) from None
            self._current = index
            yield first
            try:
                yield from stream
            except grpc.RpcError as error:
                raise errors.from_rpc_error(error, address) from None
            return
        raise self._none_answered(failures)

    # ----------------------------------------------------------- runs

    def submit(
        self,
        pipeline: Union[PathLike, Any],
        params: Optional[Mapping[str, Any]] = None,
        no_cache: bool = False,
    ) -> "Run":
        """Packs the pipeline's folder as the CLI does, uploads the code bundle
        if the cluster does not hold it yet, and submits a run.

        ``pipeline`` is a YAML file, a folder holding ``pipeline.yaml``, or a
        ``@ferry.pipeline`` function (compiled with :func:`ferry.compile`; its
        module's folder, or the folder above its package, is the bundle).
        ``params`` override the pipeline's parameters (values are sent as
        text). A spec the coordinator refuses raises :class:`ferry.SpecError`
        with the file, line and column of each problem.
        """
        yaml_text, spec_file, bundle = self._prepare(pipeline, params)
        digest = self._upload_bundle(bundle.data, bundle.digest)
        request = pb.SubmitRunRequest(
            spec_yaml=yaml_text,
            spec_file=spec_file,
            params={str(k): _param_text(v) for k, v in (params or {}).items()},
            bundle_digest=digest,
            request_id=uuid.uuid4().hex,
            no_cache=no_cache,
        )
        try:
            answer = self._call("SubmitRun", request, write=True)
        except errors.Conflict as refused:
            if "is not stored" not in str(refused):
                raise
            # Collected since this client last uploaded it: upload it again and
            # send the same submission (it was not applied).
            with self._lock:
                self._stored.discard(digest)
            self._upload_bundle(bundle.data, bundle.digest)
            answer = self._call("SubmitRun", request, write=True)
        return Run(self, answer.run_id)

    def submit_many(
        self,
        pipeline: Union[PathLike, Any],
        params: Sequence[Mapping[str, Any]],
        no_cache: bool = False,
    ) -> List["Run"]:
        """Submits one run per parameter set (a sweep of runs from a notebook)
        on one streaming call: the coordinator checks and proposes each as
        :meth:`submit` would (its own run, answered once committed), several
        at a time, and answers in order. The bundle is packed and uploaded
        once. Returns the runs in the order of ``params``.

        Every set is sent even when one is refused; the first refusal is then
        raised, with ``index`` (its position in ``params``) and ``submitted``
        (the runs the others started, None where refused). Should the member
        go away mid-way, the unanswered submissions are sent to the next one
        (each carries its own request id, so none starts twice)."""
        sets = [dict(p) for p in params]
        if not sets:
            return []
        yaml_text, spec_file, folder = self._spec(pipeline, sets[0])
        bundle = self._pack(folder)
        # A YAML spec is the same text for every set (its parameters travel
        # beside it); a Python pipeline is compiled with each set, all before
        # anything is sent, so that a mistake in one sends none.
        specs: Optional[List[Tuple[str, str]]] = None
        if not isinstance(pipeline, (str, os.PathLike)):
            specs = [self._spec(pipeline, values)[:2] for values in sets]
        digest = self._upload_bundle(bundle.data, bundle.digest)
        # Unique per submission, the same when one is sent again.
        prefix = uuid.uuid4().hex

        def batch_of(positions: Sequence[int]) -> Any:
            """The submissions at ``positions`` as one message, built as the
            stream takes them (Python's work overlaps the coordinator's)."""
            batch = pb.SubmitRunsRequest()
            for n in positions:
                text, file = specs[n] if specs is not None else (yaml_text, spec_file)
                request = batch.runs.add(
                    spec_yaml=text, spec_file=file, bundle_digest=digest, request_id=f"{prefix}-{n}", no_cache=no_cache
                )
                for name, value in sets[n].items():
                    request.params[str(name)] = _param_text(value)
            return batch

        runs: Dict[int, int] = {}
        refused: Dict[int, errors.FerryError] = {}
        self._submit_stream(batch_of, len(sets), runs, refused)
        gone = [i for i, e in refused.items() if isinstance(e, errors.Conflict) and "is not stored" in str(e)]
        if gone:
            # Collected since this client last uploaded it: upload it again
            # and send those submissions again (they were not applied).
            with self._lock:
                self._stored.discard(digest)
            self._upload_bundle(bundle.data, bundle.digest)
            for i in gone:
                del refused[i]
            self._submit_stream(batch_of, len(sets), runs, refused, only=gone)
        started = [Run(self, runs[i]) if i in runs else None for i in range(len(sets))]
        if refused:
            first = refused[min(refused)]
            first.index = min(refused)
            first.submitted = started
            raise first
        return [run for run in started if run is not None]

    def _submit_stream(
        self,
        batch_of: Callable[[Sequence[int]], Any],
        total: int,
        runs: Dict[int, int],
        refused: Dict[int, errors.FerryError],
        only: Optional[Sequence[int]] = None,
    ) -> None:
        """Sends the ``total`` submissions (those at positions ``only``, or
        all) on ``SubmitRuns``, ``SUBMIT_BATCH`` a message made by
        ``batch_of``, filling ``runs`` and ``refused`` by position; the
        unanswered ones go to the next member when one goes away."""
        pending = list(range(total)) if only is None else sorted(only)
        failures: List[str] = []
        count = len(self._stubs)
        for offset in range(count):
            if not pending:
                return
            index = (self._current + offset) % count
            address = self.config.coordinators[index]
            sent = list(pending)
            # A deadline that grows with the stream (at least 100 a second).
            timeout = self.timeout + len(sent) / 100.0
            batches = (batch_of(sent[start : start + SUBMIT_BATCH]) for start in range(0, len(sent), SUBMIT_BATCH))
            try:
                for reply in self._stubs[index].SubmitRuns(batches, timeout=timeout):
                    for answer in reply.answers:
                        position = sent[answer.index]
                        if answer.code == 0:
                            runs[position] = answer.run_id
                        else:
                            refused[position] = errors.from_code(answer.code, answer.message, address)
            except grpc.RpcError as error:
                if error.code() in _FAILOVER:
                    failures.append(f"{address}: {error.details()}")
                    pending = [i for i in sent if i not in runs and i not in refused]
                    continue
                raise errors.from_rpc_error(error, address) from None
            self._current = index
            pending = [i for i in sent if i not in runs and i not in refused]
            if pending:
                raise errors.FerryError(
                    f"coordinator {address} ended the submission stream with {len(pending)} "
                    "submissions unanswered"
                )
            return
        if not pending:
            # The last member answered everything before its stream broke.
            return
        raise self._none_answered(failures)

    def _spec(self, pipeline: Union[PathLike, Any], params: Optional[Mapping[str, Any]]) -> Tuple[str, str, Path]:
        """The spec's text, its file name and the folder its bundle is packed from."""
        from .authoring import PipelineFunction, compile as compile_pipeline, module_of

        if isinstance(pipeline, PipelineFunction):
            spec_yaml = compile_pipeline(pipeline, params)
            folder, module = module_of(pipeline.fn)
            return spec_yaml, f"{module}.py", folder
        path = Path(pipeline)
        if path.is_dir():
            path = path / "pipeline.yaml"
        try:
            yaml_text = path.read_text()
        except OSError as error:
            raise errors.InvalidRequest(f"cannot read the pipeline {path}: {error}") from None
        return yaml_text, path.name, path.parent if str(path.parent) else Path(".")

    def _prepare(self, pipeline: Union[PathLike, Any], params: Optional[Mapping[str, Any]]) -> Tuple[str, str, Any]:
        """The spec's text, its file name and the packed code bundle."""
        yaml_text, spec_file, folder = self._spec(pipeline, params)
        return yaml_text, spec_file, self._pack(folder)

    def _pack(self, folder: Path) -> Any:
        """The folder's bundle, packed again only when a file under it changed
        (its paths, sizes, modes and modification times; a folder with a file
        changed in the second before it was packed is packed every time)."""
        from .bundle import pack_dir

        key = str(folder.resolve())
        signature = _signature(folder)
        with self._lock:
            known = self._packed.get(key)
        if known is not None and known[0] == signature:
            return known[1]
        started = time.time_ns()
        bundle = pack_dir(folder)
        # A file changed within a second before packing may change again
        # without its size or (coarse) modification time showing it, as git's
        # "racily clean" entries: such a folder is packed again next time.
        newest = max((entry[3] for entry in signature), default=0)
        if newest < started - 1_000_000_000:
            with self._lock:
                self._packed[key] = (signature, bundle)
        return bundle

    def _upload_bundle(self, data: bytes, digest: str) -> str:
        with self._lock:
            if digest in self._stored:
                return digest
        blob = pb.BlobRef(digest=digest, size=len(data))
        if self._call("HasBlob", blob).present:
            with self._lock:
                self._stored.add(digest)
            return digest

        def chunks() -> Iterator[pb.Chunk]:
            if not data:
                yield pb.Chunk(digest=digest)
            for start in range(0, len(data), CHUNK_BYTES):
                yield pb.Chunk(
                    digest=digest if start == 0 else "",
                    size=len(data),
                    data=data[start : start + CHUNK_BYTES],
                )

        # Content-addressed: sent again after a failover, it is stored once.
        failures: List[str] = []
        for offset in range(len(self._stubs)):
            index = (self._current + offset) % len(self._stubs)
            address = self.config.coordinators[index]
            try:
                self._stubs[index].UploadBundle(chunks(), timeout=max(self.timeout, 600.0))
            except grpc.RpcError as error:
                if error.code() in _FAILOVER:
                    failures.append(f"{address}: {error.details()}")
                    continue
                raise errors.from_rpc_error(error, address) from None
            self._current = index
            with self._lock:
                self._stored.add(digest)
            return digest
        raise self._none_answered(failures)

    def run(self, run_id: int) -> "Run":
        """The run with this id (not fetched until asked)."""
        return Run(self, int(run_id))

    def runs(self, where: Optional[str] = None, limit: int = 100) -> List["RunSummary"]:
        """The newest ``limit`` runs (0: as many as one answer holds), oldest
        first; ``where`` keeps those whose parameters and metrics meet every
        condition, e.g. ``"accuracy>0.9,seed=42"``."""
        answer = self._call("ListRuns", pb.ListRunsRequest(where=where or "", limit=limit))
        return [RunSummary._of(self, summary) for summary in answer.runs]

    def rerun(self, run: Union[int, "Run"], from_step: Optional[str] = None) -> "Run":
        """Starts a new run of an earlier run's pipeline and code, reusing the
        outputs of its steps that succeeded; ``from_step`` runs again from
        that step (or sweep, by its written name) and every step after it
        (default: from the steps that did not succeed)."""
        run_id = run.id if isinstance(run, Run) else int(run)
        request = pb.RerunRunRequest(run_id=run_id, request_id=uuid.uuid4().hex, **{"from": from_step or ""})
        return Run(self, self._call("RerunRun", request, write=True).run_id)

    def compare(self, runs: Sequence[Union[int, "Run"]], metric: Optional[str] = None, goal: str = "max") -> "Comparison":
        """Runs side by side: state, the parameters that differ between them
        and every metric (each run's last value); with ``metric``, best first
        (``goal`` ``"max"`` or ``"min"``), ties and runs without it in the
        order given, as ``ferry runs compare`` ranks them."""
        if goal not in ("max", "min"):
            raise errors.InvalidRequest(f"goal must be 'max' or 'min', got {goal!r}")
        summaries = [Run(self, r.id if isinstance(r, Run) else int(r)).status(limit=1).summary for r in runs]
        names = sorted({k for s in summaries for k in s.params})
        first = summaries[0].params if summaries else {}
        differing = [n for n in names if any(s.params.get(n) != first.get(n) for s in summaries)]
        metrics = sorted({k for s in summaries for k in s.metrics})
        order = list(range(len(summaries)))
        best: Optional[int] = None
        if metric is not None:
            metrics = [metric] + [m for m in metrics if m != metric]
            sign = -1.0 if goal == "max" else 1.0

            def key(i: int) -> Any:
                value = summaries[i].metrics.get(metric)
                if value is None or value != value:  # missing or NaN: last
                    return (True, 0.0, i)
                return (False, sign * value, i)

            order.sort(key=key)
            top = summaries[order[0]].metrics.get(metric) if order else None
            if top is not None and top == top:
                best = summaries[order[0]].id
        rows = [
            {
                "run": summaries[i].id,
                "pipeline": summaries[i].pipeline,
                "state": summaries[i].state,
                "params": {n: summaries[i].params.get(n) for n in differing},
                "metrics": dict(summaries[i].metrics),
                "best": summaries[i].id == best,
            }
            for i in order
        ]
        return Comparison(params=differing, metrics=metrics, runs=rows, metric=metric, goal=goal, best=best)

    def lineage(self, digest: str) -> List["LineageNode"]:
        """Where an artifact came from: the step, run, command, code and
        parameters that made it, then the same for each of its inputs,
        breadth first. ``digest`` is a full BLAKE3 digest."""
        answer = self._call("Lineage", pb.LineageRequest(digest=digest))
        return [LineageNode._of(node) for node in answer.nodes]

    def create_schedule(
        self,
        name: str,
        pipeline: Union[PathLike, Any],
        cron: str,
        params: Optional[Mapping[str, Any]] = None,
    ) -> "Schedule":
        """Starts ``pipeline`` (a YAML file or folder, or a ``@ferry.pipeline``
        function) on a schedule: ``cron`` in UTC, 5 fields (or 6 with seconds
        first), e.g. ``"0 2 * * *"``. Its code bundle is uploaded now."""
        spec_yaml, spec_file, bundle = self._prepare(pipeline, params)
        digest = self._upload_bundle(bundle.data, bundle.digest)
        request = pb.CreateScheduleRequest(
            name=name,
            cron=cron,
            spec_yaml=spec_yaml,
            spec_file=spec_file,
            params={str(k): _param_text(v) for k, v in (params or {}).items()},
            bundle_digest=digest,
        )
        return Schedule._of(self._call("CreateSchedule", request, write=True))

    def schedules(self) -> List["Schedule"]:
        """Every schedule: cron, pipeline, owner, paused, last and next tick."""
        return [Schedule._of(v) for v in self._call("ListSchedules", pb.ListSchedulesRequest()).schedules]

    def pause_schedule(self, name: str) -> "Schedule":
        """Stops a schedule from starting runs until it is resumed."""
        return Schedule._of(self._call("PauseSchedule", pb.PauseScheduleRequest(name=name, paused=True), write=True))

    def resume_schedule(self, name: str) -> "Schedule":
        """Lets a paused schedule start runs again (a missed tick fires once)."""
        return Schedule._of(self._call("PauseSchedule", pb.PauseScheduleRequest(name=name, paused=False), write=True))

    def delete_schedule(self, name: str) -> "Schedule":
        """Deletes a schedule (its runs stay)."""
        return Schedule._of(self._call("DeleteSchedule", pb.DeleteScheduleRequest(name=name), write=True))

    def workers(self) -> List["Worker"]:
        """Every worker the cluster knows: capacity, use, labels, mode."""
        answer = self._call("ListWorkers", pb.ListWorkersRequest())
        return [Worker._of(view) for view in answer.workers]


def _signature(folder: Path) -> Tuple[Tuple[str, int, int, int], ...]:
    """Every path under ``folder`` (not following links, skipping ``.git``)
    with its size, mode and modification time: what a bundle depends on."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            entries.append((path, st.st_size, st.st_mode, st.st_mtime_ns))
    entries.sort()
    return tuple(entries)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise errors.ConfigError(f"cannot read the {what} {path}: {error}") from None


# --------------------------------------------------------------- plain data


@dataclass(frozen=True)
class Metric:
    """One metric value a step reported."""

    #: The metric's name.
    name: str
    #: Its value.
    value: float
    #: The training step it was reported at, when given.
    step: Optional[int]

    @classmethod
    def _of(cls, m: Any) -> "Metric":
        return cls(name=m.name, value=m.value, step=m.step if m.has_step else None)


@dataclass(frozen=True)
class Attempt:
    """One attempt of a step."""

    #: 1 for the first attempt.
    number: int
    #: The worker it ran on.
    worker: str
    #: How it ended (``succeeded``, ``failed``, ``lost``...; empty while running).
    outcome: str
    #: Its process's exit code, when it exited.
    exit_code: Optional[int]
    #: Why it ended, when not by exiting 0.
    reason: str
    #: Start and end, milliseconds since the epoch (0: not yet).
    started_ms: int
    finished_ms: int
    #: The GPUs it was given.
    gpus: List[int]
    #: Every metric value it reported.
    metrics: List[Metric]

    @classmethod
    def _of(cls, a: Any) -> "Attempt":
        return cls(
            number=a.attempt,
            worker=a.worker,
            outcome=a.outcome,
            exit_code=a.exit_code if a.has_exit_code else None,
            reason=a.reason,
            started_ms=a.started_ms,
            finished_ms=a.finished_ms,
            gpus=list(a.gpus),
            metrics=[Metric._of(m) for m in a.metrics],
        )


@dataclass(frozen=True)
class Step:
    """A step of a run (a sweep's trial is a step of its own)."""

    #: The step's name (``train.2`` for a sweep's trial).
    name: str
    #: ``pending``, ``ready``, ``running``, ``succeeded``, ``failed``, ``cancelled``, ``skipped``...
    state: str
    #: The current attempt (1-based; 0: never started).
    attempt: int
    #: The worker of the current attempt.
    worker: str
    #: Its exit code, when it exited.
    exit_code: Optional[int]
    #: Why it is in its state, when it says.
    reason: str
    #: ``cached`` or ``reused`` when it did not run in this run, else empty.
    reused: str
    #: The run and step whose outputs it took, when reused.
    reused_from: Optional[str]
    #: For a trial: the step as written, and this trial's matrix values.
    trial_of: str
    matrix: Dict[str, str]
    #: The steps it waits for.
    needs: List[str]
    #: The last value of each metric of the attempt that produced its result.
    metrics: Dict[str, float]
    #: Every attempt.
    attempts: List[Attempt]

    @classmethod
    def _of(cls, s: Any) -> "Step":
        return cls(
            name=s.name,
            state=s.state,
            attempt=s.attempt,
            worker=s.worker,
            exit_code=s.exit_code if s.has_exit_code else None,
            reason=s.reason,
            reused=s.reused,
            reused_from=f"{s.reused_run}/{s.reused_step}" if s.reused else None,
            trial_of=s.trial_of,
            matrix=dict(s.matrix),
            needs=list(s.needs),
            metrics={m.name: m.value for m in s.metrics},
            attempts=[Attempt._of(a) for a in s.attempts],
        )


@dataclass(frozen=True)
class RunSummary:
    """A run as listed: state, progress, parameters and last metrics."""

    #: The run's id.
    id: int
    #: The pipeline's name.
    pipeline: str
    #: ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``.
    state: str
    #: Who submitted it (the certificate's name).
    submitter: str
    #: The project it belongs to.
    project: str
    #: Steps in all, steps ended, steps taken from the cache.
    steps_total: int
    steps_done: int
    steps_cached: int
    #: Submitted and finished, milliseconds since the epoch (0: not yet).
    submitted_ms: int
    finished_ms: int
    #: Why it ended, when not by its steps alone.
    reason: str
    #: Its parameters, as text.
    params: Dict[str, str]
    #: Per metric name, the last value reported.
    metrics: Dict[str, float]
    _client: Optional[Client] = field(default=None, repr=False, compare=False)

    @classmethod
    def _of(cls, client: Optional[Client], s: Any) -> "RunSummary":
        return cls(
            id=s.run_id,
            pipeline=s.pipeline,
            state=s.state,
            submitter=s.submitter,
            project=s.project,
            steps_total=s.steps_total,
            steps_done=s.steps_done,
            steps_cached=s.steps_cached,
            submitted_ms=s.submitted_ms,
            finished_ms=s.finished_ms,
            reason=s.reason,
            params=dict(s.params),
            metrics=dict(s.metrics),
            _client=client,
        )

    @property
    def done(self) -> bool:
        """Whether the run has ended."""
        return self.state in ENDED

    def run(self) -> "Run":
        """The run itself, to follow, cancel or download from."""
        if self._client is None:
            raise errors.FerryError("this summary is not tied to a client")
        return Run(self._client, self.id)


#: The states a run ends in.
ENDED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class RunStatus:
    """A run's summary, its steps and its step counts by state."""

    #: The summary (state, progress, params, metrics).
    summary: RunSummary
    #: The steps listed (every step of a run of at most 1,000 steps).
    steps: List[Step]
    #: How many steps are in each state.
    step_counts: Dict[str, int]
    #: The code bundle's digest.
    bundle_digest: str

    @property
    def state(self) -> str:
        """The run's state."""
        return self.summary.state

    def failed_steps(self) -> List[Step]:
        """The steps that failed."""
        return [s for s in self.steps if s.state == "failed"]


@dataclass(frozen=True)
class LogLine:
    """One line a step printed."""

    #: The step (``train.2`` for a trial) and its attempt.
    step: str
    attempt: int
    #: ``stdout`` or ``stderr``.
    stream: str
    #: When the worker read it, milliseconds since the epoch.
    timestamp_ms: int
    #: The line, without its newline.
    text: str


@dataclass(frozen=True)
class Worker:
    """A worker as the cluster sees it."""

    #: Its name (from its certificate).
    name: str
    #: ``active``, ``cordoned`` or ``draining``.
    mode: str
    #: Whether it is connected now.
    connected: bool
    #: Steps running on it.
    running: int
    #: Its capacity and what is in use: CPU (cores), memory (bytes), GPUs.
    cpus: float
    memory_bytes: int
    gpus: int
    cpus_in_use: float
    memory_in_use: int
    gpus_in_use: int
    #: Its labels.
    labels: Dict[str, str]

    @classmethod
    def _of(cls, w: Any) -> "Worker":
        return cls(
            name=w.name,
            mode=w.mode,
            connected=w.connected,
            running=w.running,
            cpus=w.capacity.cpu_millis / 1000.0,
            memory_bytes=w.capacity.memory_bytes,
            gpus=w.capacity.gpus,
            cpus_in_use=w.in_use.cpu_millis / 1000.0,
            memory_in_use=w.in_use.memory_bytes,
            gpus_in_use=w.in_use.gpus,
            labels=dict(w.labels),
        )


@dataclass(frozen=True)
class Comparison:
    """Runs side by side (:meth:`Client.compare`)."""

    #: The parameters whose values differ between the runs.
    params: List[str]
    #: Every metric any run reported (the ranking metric first).
    metrics: List[str]
    #: One record per run (``run``, ``pipeline``, ``state``, ``params``,
    #: ``metrics``, ``best``), best first when ranked by a metric.
    runs: List[Dict[str, Any]]
    #: The ranking metric and goal, if any, and the best run's id.
    metric: Optional[str]
    goal: str
    best: Optional[int]

    def frame(self) -> Any:
        """The runs as a pandas DataFrame: one row per run, a column per
        differing parameter and per metric."""
        import pandas

        return pandas.DataFrame.from_records(
            [
                {"run": r["run"], "state": r["state"], **r["params"], **{m: r["metrics"].get(m) for m in self.metrics}}
                for r in self.runs
            ]
        )


@dataclass(frozen=True)
class LineageNode:
    """An artifact in a lineage: what made it (run, step, attempt, command,
    code, parameters, matrix values) and its inputs."""

    digest: str
    name: str
    size: int
    run_id: int
    step: str
    attempt: int
    command: List[str]
    bundle_digest: str
    code_digest: str
    params: Dict[str, str]
    matrix: Dict[str, str]
    #: Each input as (name, digest, size).
    inputs: List[Tuple[str, str, int]]

    @classmethod
    def _of(cls, n: Any) -> "LineageNode":
        return cls(
            digest=n.digest,
            name=n.name,
            size=n.size,
            run_id=n.run_id,
            step=n.step,
            attempt=n.attempt,
            command=list(n.command),
            bundle_digest=n.bundle_digest,
            code_digest=n.code_digest,
            params=dict(n.params),
            matrix=dict(n.matrix),
            inputs=[(i.name, i.digest, i.size) for i in n.inputs],
        )


@dataclass(frozen=True)
class Schedule:
    """A schedule: a pipeline started on a cron expression (UTC)."""

    name: str
    cron: str
    pipeline: str
    owner: str
    paused: bool
    #: Milliseconds since the epoch (0: none yet).
    last_tick_ms: int
    next_tick_ms: int
    #: The last run it started (0: none yet), runs started, ticks missed.
    last_run: int
    fired: int
    missed: int
    params: Dict[str, str]

    @classmethod
    def _of(cls, v: Any) -> "Schedule":
        return cls(
            name=v.name,
            cron=v.cron,
            pipeline=v.pipeline,
            owner=v.owner,
            paused=v.paused,
            last_tick_ms=v.last_tick_ms,
            next_tick_ms=v.next_tick_ms,
            last_run=v.last_run,
            fired=v.fired,
            missed=v.missed,
            params=dict(v.params),
        )


class Artifact:
    """An output a step stored: its step, name, size and BLAKE3 digest."""

    def __init__(self, run: "Run", view: Any) -> None:
        #: The run it belongs to.
        self.run_id = run.id
        #: The step that wrote it and the attempt.
        self.step: str = view.step
        self.attempt: int = view.attempt
        #: The output's name.
        self.name: str = view.name
        #: Its BLAKE3 digest (hex) and size in bytes.
        self.digest: str = view.digest
        self.size: int = view.size
        self._run = run

    def __repr__(self) -> str:
        return f"Artifact(run={self.run_id}, step={self.step!r}, name={self.name!r}, size={self.size}, digest={self.digest[:12]}...)"

    def download(self, path: Optional[PathLike] = None) -> Path:
        """Streams the artifact into ``path`` (default: its name in the current
        folder), verifying its BLAKE3 digest on the way; the file appears only
        once it verified (written to ``PATH.ferry-partial`` first)."""
        target = Path(path) if path is not None else Path(self.name)
        if target.is_dir():
            target = target / self.name
        partial = target.with_name(target.name + ".ferry-partial")
        hasher = blake3.blake3()
        written = 0
        request = pb.DownloadArtifactRequest(run_id=self.run_id, step=self.step, name=self.name)
        with open(partial, "wb") as out:
            for chunk in self._run._client._stream("DownloadArtifact", request, timeout=None):
                if chunk.data:
                    hasher.update(chunk.data)
                    out.write(chunk.data)
                    written += len(chunk.data)
                if chunk.zeros:
                    remaining = chunk.zeros
                    zero = bytes(min(remaining, 1 << 20))
                    while remaining:
                        piece = zero[: min(remaining, len(zero))]
                        hasher.update(piece)
                        remaining -= len(piece)
                    out.seek(chunk.zeros, os.SEEK_CUR)
                    out.truncate()
                    written += chunk.zeros
            out.flush()
            os.fsync(out.fileno())
        got = hasher.hexdigest()
        if written != self.size or got != self.digest:
            partial.unlink(missing_ok=True)
            raise errors.FerryError(
                f"artifact {self.step}/{self.name} of run {self.run_id} did not verify: "
                f"got {written} bytes hashing to {got}, expected {self.size} bytes hashing to {self.digest}"
            )
        os.replace(partial, target)
        return target


class Run:
    """A run on the cluster: follow it, read its steps, logs, artifacts and
    metrics, cancel it or run it again."""

    def __init__(self, client: Client, run_id: int) -> None:
        #: The run's id.
        self.id = run_id
        self._client = client

    def __repr__(self) -> str:
        return f"Run({self.id})"

    def status(self, state: Optional[str] = None, offset: int = 0, limit: int = 0) -> RunStatus:
        """The run now: summary, steps (with attempts, reasons, cache reuse,
        trials and their matrix values) and counts by state. A run of more
        than 1,000 steps lists a page: ``state``, ``offset``, ``limit``."""
        view = self._client._call(
            "GetRun",
            pb.GetRunRequest(run_id=self.id, step_state=state or "", step_offset=offset, step_limit=limit),
        )
        return _status_of(self._client, view)

    def wait(
        self,
        progress: bool = True,
        raise_on_failure: bool = True,
        poll_seconds: float = 0.5,
        timeout: Optional[float] = None,
    ) -> RunStatus:
        """Waits for the run to end and returns its final status. With
        ``progress``, shows steps done of total (a bar in Jupyter when
        ``ipywidgets`` is there, a line on a terminal's stderr). Raises
        :class:`ferry.RunFailed` naming the failed steps and their exit codes
        when the run did not succeed and ``raise_on_failure`` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Progress(self.id) if progress else None
        try:
            while True:
                status = self.status()
                if bar is not None:
                    bar.update(status.summary)
                if status.summary.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {self.id} is still {status.state} after {timeout} s")
                time.sleep(poll_seconds)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and status.state != "succeeded":
            failed = status.failed_steps()
            described = ", ".join(
                f"{s.name} (exit code {s.exit_code}"
                f"{': ' + s.reason if s.reason and not s.reason.startswith('exited with code') else ''})"
                if s.exit_code is not None
                else f"{s.name} ({s.reason or s.state})"
                for s in failed
            )
            message = f"run {self.id} {status.state}"
            if described:
                message += f": {described}"
            elif status.summary.reason:
                message += f": {status.summary.reason}"
            raise errors.RunFailed(message, self.id, status.state, failed)
        return status

    def cancel(self) -> RunSummary:
        """Cancels the run: every process of its steps is killed."""
        view = self._client._call("CancelRun", pb.CancelRunRequest(run_id=self.id), write=True)
        return RunSummary._of(self._client, view.summary)

    def logs(self, step: Optional[str] = None, follow: bool = False) -> Iterator[LogLine]:
        """The lines the run's steps printed, in order, as they are stored;
        with ``follow``, also those printed from now until the run (or the
        step) ends."""
        request = pb.StreamLogsRequest(run_id=self.id, step=step or "", follow=follow)
        for line in self._client._stream("StreamLogs", request, timeout=None):
            yield LogLine(
                step=line.step,
                attempt=line.attempt,
                stream=line.stream,
                timestamp_ms=line.timestamp_ms,
                text=line.text,
            )

    def artifacts(self) -> List[Artifact]:
        """Every output the run's steps stored."""
        answer = self._client._call("ListArtifacts", pb.ListArtifactsRequest(run_id=self.id))
        return [Artifact(self, view) for view in answer.artifacts]

    def metrics(self) -> List[Dict[str, Any]]:
        """Every metric value every attempt reported, as plain records:
        ``{"step", "attempt", "name", "value", "step_index"}`` in reported order."""
        view = self._client._call("GetRun", pb.GetRunRequest(run_id=self.id, metric_history=True))
        records = []
        for step in view.steps:
            for attempt in step.attempts:
                for metric in attempt.metrics:
                    records.append(
                        {
                            "step": step.name,
                            "attempt": attempt.attempt,
                            "name": metric.name,
                            "value": metric.value,
                            "step_index": metric.step if metric.has_step else None,
                        }
                    )
        return records

    def metrics_frame(self) -> Any:
        """:meth:`metrics` as a pandas DataFrame (every value, for training
        curves). Needs pandas (``pip install ferry-sdk[pandas]``)."""
        try:
            import pandas
        except ImportError:
            raise errors.FerryError("metrics_frame needs pandas: pip install 'ferry-sdk[pandas]'") from None
        return pandas.DataFrame.from_records(
            self.metrics(), columns=["step", "attempt", "name", "value", "step_index"]
        )


def _status_of(client: Client, view: Any) -> RunStatus:
    return RunStatus(
        summary=RunSummary._of(client, view.summary),
        steps=[Step._of(s) for s in view.steps],
        step_counts=dict(view.step_counts),
        bundle_digest=view.bundle_digest,
    )


class _Progress:
    """Steps done of total: in Jupyter a bar updated in place (an ipywidgets
    bar when ipywidgets is installed, else an HTML <progress> element updated
    through its display id), on a terminal one line rewritten on stderr, and
    nothing when stderr is not a terminal."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.widget: Any = None
        self.label: Any = None
        self.handle: Any = None
        self.tty = sys.stderr.isatty()
        self.last = ""
        try:
            from IPython import get_ipython  # type: ignore[import-not-found]

            shell = get_ipython()
            in_notebook = shell is not None and "IPKernelApp" in shell.config
        except Exception:
            in_notebook = False
        if not in_notebook:
            return
        from IPython.display import HTML, display  # type: ignore[import-not-found]

        try:
            import ipywidgets  # type: ignore[import-not-found]

            self.widget = ipywidgets.IntProgress(min=0, max=1, description=f"run {run_id}")
            self.label = ipywidgets.Label()
            display(ipywidgets.HBox([self.widget, self.label]))
        except ImportError:
            self.handle = display(HTML(self._html(0, 1, "submitted")), display_id=True)

    def _html(self, done: int, total: int, text: str) -> str:
        import html

        return (
            f'<progress value="{done}" max="{max(total, 1)}" style="width: 20em"></progress> '
            f"<code>{html.escape(text)}</code>"
        )

    def update(self, summary: RunSummary) -> None:
        text = f"run {self.run_id}: {summary.steps_done}/{summary.steps_total} steps, {summary.state}"
        if text == self.last:
            return
        if self.widget is not None:
            self.widget.max = max(summary.steps_total, 1)
            self.widget.value = summary.steps_done
            self.label.value = text
        elif self.handle is not None:
            from IPython.display import HTML  # type: ignore[import-not-found]

            self.handle.update(HTML(self._html(summary.steps_done, summary.steps_total, text)))
        elif self.tty:
            width = 30
            filled = width * summary.steps_done // max(summary.steps_total, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
            sys.stderr.flush()
        self.last = text

    def close(self) -> None:
        if self.widget is None and self.handle is None and self.tty and self.last:
            sys.stderr.write("\n")
            sys.stderr.flush()
