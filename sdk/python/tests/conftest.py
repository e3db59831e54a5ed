"""Fixtures: a real ``ferry dev`` cluster (a coordinator and a worker in one
process, real TLS, a free port) in a temporary HOME, stopped after the tests.

The ``ferry`` binary is ``$FERRY_BIN``, else ``<repo>/target/debug/ferry``
(built by ``cargo build --workspace``)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
try:  # the installed package (CI installs it with pip), else this tree's
    import ferry  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "sdk" / "python"))


# Read once: the ``client`` fixture clears every FERRY_ variable.
_FERRY_BIN = Path(os.environ.get("FERRY_BIN", REPO / "target" / "debug" / "ferry"))


def ferry_bin() -> Path:
    """The ``ferry`` binary the tests run."""
    return _FERRY_BIN


def isolated_env(home: Path) -> Dict[str, str]:
    """The environment with no FERRY_ or XDG_ variable and HOME set to ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "XDG_"))}
    env["HOME"] = str(home)
    # Python steps run `python3 -m ferry.run`: this interpreter's folder first,
    # where ferry-sdk is installed.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


class Dev:
    """A running ``ferry dev``: its HOME, address, client config and log."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log = home / "dev.log"
        self.process = subprocess.Popen(
            [str(ferry_bin()), "dev", "--listen", "127.0.0.1:0", "--cpus", "2", "--memory", "2Gi",
             "--data-dir", str(home / "dev-data"), "--metrics-listen", "127.0.0.1:0"],
            cwd=home,
            env=isolated_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),
            text=True,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self.wait_line("coordinator listening on").split("listening on ")[1].split(" ")[0]
        self.config = Path(self.wait_line("client config written to").split("written to ")[1].strip())
        self.metrics_url = self.wait_line("metrics at ").split("metrics at ")[1].strip()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 60.0) -> str:
        """Waits (bounded) for a stdout line containing ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None and self.lines.empty():
                raise RuntimeError(f"no line with {text!r} from ferry dev; stdout {self.seen}; log:\n{self.log.read_text()}")
            try:
                self.seen.append(self.lines.get(timeout=min(left, 0.5)))
            except queue.Empty:
                pass

    def ferry(self, *args: str, cwd: Optional[Path] = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the CLI against this cluster."""
        result = subprocess.run(
            [str(ferry_bin()), *args], cwd=cwd or self.home, env=isolated_env(self.home),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"ferry {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """One ``ferry dev`` for the whole session."""
    if not ferry_bin().exists():
        pytest.fail(f"{ferry_bin()} is missing: run 'cargo build --workspace' first (or set FERRY_BIN)")
    home = tmp_path_factory.mktemp("home")
    cluster = Dev(home)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def client(dev: Dev, monkeypatch: pytest.MonkeyPatch):
    """A client that found the cluster the way the CLI does: through HOME."""
    import ferry

    for key in list(os.environ):
        if key.startswith(("FERRY_", "XDG_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(dev.home))
    with ferry.Client() as connected:
        yield connected


@pytest.fixture()
def iris(tmp_path: Path) -> Path:
    """A copy of examples/iris."""
    target = tmp_path / "iris"
    shutil.copytree(REPO / "examples" / "iris", target)
    return target
