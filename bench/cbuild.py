"""Builds bench/cforward.c with gcc at run time, into bench/_build/ (gitignored).

The binary is rebuilt when the source, the flags or the pylibsrtp binding change; the struct
layout of ``srtp_policy_t`` is passed in from pylibsrtp's cdef (see ``srtpkit.PolicyLayout``).

pylibsrtp's extension also refers to a few CPython symbols (``_Py_NoneStruct``, ``PyLong_FromLong``
...) that a plain executable lacks, so dlopen would fail.  The build adds a stub for each one
(exported with ``-rdynamic``) that aborts if ever called; only srtp_* functions are ever called.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from bench.srtpkit import PolicyLayout, binding_path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "cforward.c"
BUILD_DIR = HERE / "_build"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]


class BuildError(RuntimeError):
    """gcc is missing or refused the source."""


def compiler() -> str | None:
    """The C compiler the bench uses, or None if there is none."""
    return shutil.which("gcc")


#: Used when ``nm`` is not installed: what pylibsrtp 1.0's binding needs from CPython.
_KNOWN_PY_SYMBOLS = (
    "PyArg_UnpackTuple PyErr_Occurred PyEval_RestoreThread PyEval_SaveThread PyImport_ImportModule "
    "PyLong_FromLong PyLong_FromVoidPtr PyObject_CallMethod PyObject_Free PyObject_Malloc "
    "_Py_Dealloc _Py_NoneStruct"
).split()


def python_symbols(so_path: str) -> list[str]:
    """The CPython symbols the binding leaves undefined (from ``nm -D``, else a known list)."""
    nm = shutil.which("nm")
    if nm is None:
        return list(_KNOWN_PY_SYMBOLS)
    out = subprocess.run([nm, "-D", "--undefined-only", so_path], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    return sorted(n for n in names if n.startswith(("Py", "_Py")))


def stub_source(symbols: list[str]) -> str:
    lines = ["#include <stdlib.h>", "/* stand-ins for CPython symbols; never called */"]
    lines += [f"void {name}(void) {{ abort(); }}" for name in symbols]
    return "\n".join(lines) + "\n"


def build_cforward(build_dir: Path = BUILD_DIR) -> Path:
    """Compile (or reuse) the C forwarder and return the executable's path."""
    cc = compiler()
    if cc is None:
        raise BuildError("gcc not found on PATH; the C baseline needs it")
    flags = CFLAGS + PolicyLayout.from_binding().defines()
    stubs = stub_source(python_symbols(binding_path()))
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(stubs.encode())
    digest.update(" ".join(flags).encode())
    digest.update(binding_path().encode())
    exe = build_dir / f"cforward-{digest.hexdigest()[:12]}"
    if exe.exists():
        return exe
    build_dir.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    stub_file = exe.with_suffix(".stubs.c")
    stub_file.write_text(stubs)
    proc = subprocess.run(
        [cc, *flags, "-rdynamic", "-o", str(tmp), str(SOURCE), str(stub_file), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"gcc failed ({proc.returncode}):\n{proc.stderr}")
    tmp.replace(exe)
    return exe
