"""The exceptions the SDK raises: one per kind of refusal, each with the
coordinator's message (written to say what to do about it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import grpc

__all__ = [
    "FerryError",
    "ConfigError",
    "Unavailable",
    "PermissionDenied",
    "NotFound",
    "InvalidRequest",
    "SpecError",
    "Diagnostic",
    "Conflict",
    "RunFailed",
]


class FerryError(Exception):
    """Every error the SDK raises derives from this one."""

    #: Raised by ``Client.submit_many`` for the first refused submission: its
    #: position in ``params`` (None otherwise).
    index: Optional[int] = None
    #: Raised by ``Client.submit_many``: one entry per parameter set, the
    #: ``Run`` it started or None where it was refused (empty otherwise).
    submitted: Sequence[Optional[object]] = ()


class ConfigError(FerryError):
    """The client configuration is missing, unreadable or invalid (what the
    CLI reports before connecting)."""


class Unavailable(FerryError):
    """No coordinator answered. ``addresses`` lists every address tried, each
    with why it failed."""

    def __init__(self, message: str, addresses: Sequence[str] = ()) -> None:
        super().__init__(message)
        #: The coordinator addresses that were tried, in order.
        self.addresses: List[str] = list(addresses)


class PermissionDenied(FerryError):
    """The coordinator refused the caller: not allowed to do this, or its
    certificate was not accepted (revoked, from another CA, the wrong role)."""


class NotFound(FerryError):
    """What the call names (a run, a step, an artifact, a schedule) does not exist."""


class InvalidRequest(FerryError):
    """The request was refused as malformed (other than a pipeline spec error)."""


class Conflict(FerryError):
    """The thing exists but is not in a state to take the request (e.g.
    cancelling a run that already ended)."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a pipeline spec, with its position when known (1-based)."""

    #: The file the spec came from (as submitted).
    file: str
    #: Line of the problem, when known.
    line: Optional[int]
    #: Column of the problem, when known.
    column: Optional[int]
    #: What is wrong, and usually what to do about it.
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


_DIAGNOSTIC = re.compile(r"^error: (?P<file>[^:\n]*)(?::(?P<line>\d+)(?::(?P<column>\d+))?)?: (?P<message>.*)$")


class SpecError(FerryError):
    """A pipeline spec was refused (by the coordinator's validation, or while
    compiling a Python pipeline). ``diagnostics`` lists every problem;
    ``file``, ``line`` and ``column`` are those of the first."""

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic] = ()) -> None:
        super().__init__(message)
        #: Every problem found, in the order reported.
        self.diagnostics: List[Diagnostic] = list(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        #: The file of the first problem (None when not from a file).
        self.file: Optional[str] = first.file if first else None
        #: Its line (1-based), when known.
        self.line: Optional[int] = first.line if first else None
        #: Its column (1-based), when known.
        self.column: Optional[int] = first.column if first else None

    @classmethod
    def from_message(cls, message: str) -> "SpecError":
        """Parses the coordinator's ``error: FILE:LINE:COLUMN: MESSAGE`` lines."""
        diagnostics = []
        for line in message.splitlines():
            match = _DIAGNOSTIC.match(line.strip())
            if match:
                diagnostics.append(
                    Diagnostic(
                        file=match["file"],
                        line=int(match["line"]) if match["line"] else None,
                        column=int(match["column"]) if match["column"] else None,
                        message=match["message"],
                    )
                )
        return cls(message, diagnostics)


class RunFailed(FerryError):
    """A run ended in a state other than ``succeeded`` while being waited for.
    ``failed_steps`` names each failed step with its exit code and reason."""

    def __init__(self, message: str, run_id: int, state: str, failed_steps: Sequence["object"] = ()) -> None:
        super().__init__(message)
        #: The run's id.
        self.run_id = run_id
        #: The state it ended in (``failed``, ``cancelled``).
        self.state = state
        #: The steps that failed (``ferry.Step`` objects).
        self.failed_steps = list(failed_steps)


def from_rpc_error(error: grpc.RpcError, address: str) -> FerryError:
    """The SDK's exception for a refused or failed call to ``address``."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return from_status(code, details, address)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_code(code: int, details: str, address: str) -> FerryError:
    """The SDK's exception for a refusal given as a numeric gRPC status code
    (as a ``SubmitRuns`` reply carries it)."""
    return from_status(_CODES.get(code), details, address)


def from_status(code: Optional[grpc.StatusCode], details: str, address: str) -> FerryError:
    """The SDK's exception for status ``code`` with the coordinator's message."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"coordinator {address} is unavailable: {details}", [address])
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if _DIAGNOSTIC.search(details) or any(_DIAGNOSTIC.match(l.strip()) for l in details.splitlines()):
            return SpecError.from_message(details)
        return InvalidRequest(details)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return Conflict(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unavailable(f"coordinator {address} did not answer in time: {details}", [address])
    name = code.name if code is not None else "UNKNOWN"
    return FerryError(f"{details} ({name}, from {address})")
