"""Regenerate the Python code for the .proto files in this folder.

Run ``python proto/generate.py`` from the repository root. The protos import each other as
``minisw/proto/*.proto`` so that the generated modules import ``minisw.proto.*``; we build that
include path in a temporary folder so the repository keeps a flat ``proto/``. CI runs this and
fails if the checked-in output differs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    protos = sorted(p.name for p in HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src", "minisw", "proto")
        src.mkdir(parents=True)
        for name in protos:
            shutil.copy(HERE / name, src / name)
        out = Path(tmp, "out")
        out.mkdir()
        import grpc_tools  # type: ignore[import-untyped]

        well_known = Path(grpc_tools.__file__).parent / "_proto"
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{Path(tmp, 'src')}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--mypy_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_grpc_out={out}",
            *[f"minisw/proto/{name}" for name in protos],
        ]
        subprocess.run(cmd, check=True)
        for old in [*HERE.glob("*_pb2.py"), *HERE.glob("*_pb2_grpc.py"), *HERE.glob("*_pb2*.pyi")]:
            old.unlink()
        for generated in Path(out, "minisw", "proto").iterdir():
            shutil.copy(generated, HERE / generated.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
