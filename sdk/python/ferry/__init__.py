"""Ferry's Python SDK: drive a Ferry cluster from Python and notebooks.

>>> import ferry
>>> client = ferry.Client()                      # the CLI's configuration
>>> run = client.submit("examples/iris", params={"seed": 7})
>>> run.wait()                                   # progress, then the final status
>>> run.metrics_frame()                          # every metric value, as a DataFrame
"""

from .authoring import Gather, Gpu, Input, OutputRef, Resources, compile, log_metric, matrix_value, pipeline, step
from .bundle import BundleError, PackedBundle, pack_dir
from .client import (
    Artifact,
    Attempt,
    Client,
    Comparison,
    LineageNode,
    LogLine,
    Metric,
    Run,
    RunStatus,
    RunSummary,
    Schedule,
    Step,
    Worker,
)
from .config import ClientConfig
from .errors import (
    Conflict,
    ConfigError,
    Diagnostic,
    FerryError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RunFailed,
    SpecError,
    Unavailable,
)

__all__ = [
    "Gather",
    "Gpu",
    "Input",
    "OutputRef",
    "Resources",
    "compile",
    "log_metric",
    "matrix_value",
    "pipeline",
    "step",
    "Artifact",
    "Attempt",
    "BundleError",
    "Client",
    "ClientConfig",
    "Comparison",
    "LineageNode",
    "Schedule",
    "ConfigError",
    "Conflict",
    "Diagnostic",
    "FerryError",
    "InvalidRequest",
    "LogLine",
    "Metric",
    "NotFound",
    "PackedBundle",
    "PermissionDenied",
    "Run",
    "RunFailed",
    "RunStatus",
    "RunSummary",
    "SpecError",
    "Step",
    "Unavailable",
    "Worker",
    "pack_dir",
]
