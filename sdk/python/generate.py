"""Generates the gRPC stubs in ``ferry/v1`` from the repository's ``proto/``.

Run from anywhere: ``python sdk/python/generate.py [OUT_DIR]`` (default: this
package's folder). Needs grpcio-tools 1.66.2 (the ``test`` extra), the version
the checked-in stubs come from.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"


def generate(out: Path) -> None:
    """Writes ``ferry/v1/ferry_pb2.py``, ``.pyi`` and ``ferry_pb2_grpc.py`` under ``out``."""
    from grpc_tools import protoc  # type: ignore[import-untyped]
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO / "ferry" / "v1" / "ferry.proto"),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
