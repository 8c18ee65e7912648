"""`fuse verify --backend`: prove a file on the Keras backend it will be served with.

Keras 3 runs one model file on TensorFlow, JAX or PyTorch. `verify_on_backend` runs `fuse
verify` again in a fresh interpreter with `KERAS_BACKEND` set (the backend is chosen
when Keras is first imported, so it cannot change inside a process) and returns its
report, or raises its error with the same exit code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fuse_cli.choices import Backend
from fuse_cli.errors import (
    FuseError,
    IncompatibleModelsError,
    ModelLoadError,
    OutputError,
    UsageError,
    VerificationError,
)

if TYPE_CHECKING:
    from fuse_cli.report import VerifyReport

PACKAGES = {Backend.TENSORFLOW: "tensorflow", Backend.JAX: "jax", Backend.TORCH: "torch"}
_ERRORS: dict[int, type[FuseError]] = {
    2: UsageError, 3: ModelLoadError, 4: IncompatibleModelsError, 5: OutputError,
    6: VerificationError,
}
TIMEOUT = 1800  # seconds: the child loads and runs the models once


def check_backend(backend: Backend) -> None:
    """The backend's package is installed.

    Raises:
        UsageError: It is not, naming what to install (exit 2).
    """
    package = PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"--backend {backend.value} needs {package}, which is not installed: "
                         f"pip install {package}")


def verify_on_backend(
    merged: Path, members: Sequence[Path], backend: Backend, *, unsafe: bool = False
) -> VerifyReport:
    """`fuse verify MERGED MEMBERS...` in a fresh interpreter on `backend`.

    Raises:
        FuseError: The child's error, with its exit code, naming the backend.
    """
    from fuse_cli.report import MemberCheck, VerifyReport

    check_backend(backend)
    command = [sys.executable, "-m", "fuse_cli", "verify", str(merged),
               *(str(m) for m in members), "--json", *(["--unsafe"] if unsafe else [])]
    env = {**os.environ, "KERAS_BACKEND": backend.value, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True,
                               timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"{merged}: fuse verify on {backend.value} did not finish in "
                                f"{TIMEOUT} s") from None
    try:
        found = json.loads(child.stdout) if child.stdout.strip() else {}
    except json.JSONDecodeError:
        found = {}
    if child.returncode != 0 or not found.get("ok"):
        error = found.get("error") or (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise _ERRORS.get(child.returncode, VerificationError)(f"on {backend.value}: {error}")
    members_found = [MemberCheck(**m) for m in found["members"]]
    return VerifyReport(
        file=found["file"], mode=found["mode"],
        formula_max_abs_error=found["formula_max_abs_error"],
        provenance_recorded=found["provenance_recorded"], members=members_found,
        elapsed_seconds=found["elapsed_seconds"], shared=found.get("shared", []),
        soup=found.get("soup"), backend=found.get("backend", backend.value),
    )
