"""`run.wait(progress=True)` as a user sees it: on a terminal (a real
pseudo-terminal) and in a real Jupyter kernel (nbclient, ipykernel)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import ferry

PIPELINE = "name: three\nsteps:\n  - name: a\n    shell: \"true\"\n  - name: b\n    needs: [a]\n    shell: \"true\"\n  - name: c\n    needs: [b]\n    shell: \"true\"\n"


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "three"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(PIPELINE)
    return folder


def test_a_terminal_shows_a_bar_ending_in_the_runs_state(dev, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    script = (
        "import ferry, sys\n"
        f"run = ferry.Client(config={str(dev.config)!r}).submit({str(folder)!r}, no_cache=True)\n"
        "run.wait(progress=True)\n"
    )
    main, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=secondary, env=env)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert process.wait(timeout=120) == 0, seen
    text = seen.decode()
    assert "\r[" in text and "3/3 steps, succeeded" in text, text
    assert "[##############################] run" in text and text.endswith("\n"), text


def test_a_jupyter_kernel_shows_a_bar_updated_in_place(dev, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = _folder(tmp_path)
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import sys\n"
        f"sys.path[:0] = {[p for p in sys.path if p]!r}\n"
        "import ferry\n"
        f"run = ferry.Client(config={str(dev.config)!r}).submit({str(folder)!r}, no_cache=True)\n"
        "status = run.wait(progress=True)\n"
        "print(status.state)"
    ))
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    client.execute()
    outputs = notebook.cells[0].outputs
    shown = [o for o in outputs if o.output_type == "display_data"]
    assert len(shown) == 1 and "<progress" in shown[0].data["text/html"], outputs
    # Updated in place through its display id: the one bar ends full.
    assert "3/3 steps, succeeded" in shown[0].data["text/html"], shown[0].data
    assert 'value="3" max="3"' in shown[0].data["text/html"], shown[0].data
    assert any(o.output_type == "stream" and o.text.strip() == "succeeded" for o in outputs), outputs
