"""Regenerate the committed gRPC stubs from the ``.proto`` files beside this script.

This is the one way to regenerate them (``python -m plugin.api.generate``);
``tests/plugin/test_stubs.py`` runs the same function into a temporary directory and
fails when the committed files differ.

protoc writes ``import deviceplugin_pb2`` into ``*_pb2_grpc.py``: a top-level import
that only works with ``plugin/api`` on ``sys.path``. We rewrite it to a package-relative
import so the stubs work as ``plugin.api.*`` from any working directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["API_DIR", "PROTOS", "generate", "main"]

API_DIR = Path(__file__).resolve().parent
PROTOS = ("deviceplugin.proto", "podresources.proto")

_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(out_dir: Path = API_DIR) -> list[Path]:
    """Run protoc on ``PROTOS`` into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{API_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(API_DIR / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written: list[Path] = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        grpc_file = out_dir / f"{stem}_pb2_grpc.py"
        grpc_file.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1 as \2", grpc_file.read_text()))
        written += [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2.pyi", grpc_file]
    return written


def main() -> int:
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else API_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
