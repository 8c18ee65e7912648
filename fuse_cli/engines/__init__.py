"""Engines: where the pass over the data runs (`--engine local|ray`).

The pass runs each model over the labelled data once and hands back its outputs and the
rows they cover, in the data's row order. Everything before it (reading the labels,
checking the data against the model) and after it (scores, the search, the saved
predictions, the merge) is the same code whichever engine ran it.

- `local` (the default): in this process, `fuse_cli.evaluation.local_outputs`.
- `ray`: Ray Data, one actor pool per model (`fuse_cli.engines.ray_pass`), started on
  this machine or joined to a cluster by `--address`.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fuse_cli.choices import EngineKind
from fuse_cli.engines.ray_pass import ray_session
from fuse_cli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from fuse_cli.images import ImageOptions
    from fuse_cli.report import Advance

RAY_MISSING = "--engine ray needs Ray: pip install 'fuse-cli[ray]'"
CONNECT_SECONDS = 5.0  # an --address that does not answer in this time is unreachable


class Engine(Protocol):
    """Runs one model over the data: its output rows and the data rows they belong to."""

    @property
    def notes(self) -> list[str]:
        """What the engine saw that the report should say (Ray: workers that died)."""
        ...

    def outputs(self, model: Any, data: Any, *, label: str, batch_size: int,
                images: ImageOptions, advance: Advance | None) -> tuple[np.ndarray, np.ndarray]:
        ...


@dataclass(frozen=True)
class EngineOptions:
    """`--engine`, `--workers`, `--address`, as checked.

    Attributes:
        kind: Where the pass runs.
        workers: Actors per model (Ray); default 1.
        address: A running Ray cluster (`auto`, `HOST:PORT` or `ray://HOST:PORT`); None
            starts Ray on this machine and stops it after.
        unsafe: The models were loaded with `--unsafe` (the workers load them alike).
        debug: Let Ray's banner, logs and warnings through.
    """

    kind: EngineKind = EngineKind.LOCAL
    workers: int | None = None
    address: str | None = None
    unsafe: bool = False
    debug: bool = False

    @property
    def pool(self) -> int:
        """Actors per model."""
        return self.workers or 1


def check_engine(options: EngineOptions) -> None:
    """Everything about the engine that can be checked before a model loads: option
    combinations, Ray installed, a cluster address that answers (within seconds).

    Raises:
        UsageError: Ray options without `--engine ray`, Ray not installed, a bad or
            unreachable `--address` (exit 2).
    """
    if options.kind is EngineKind.LOCAL:
        given = [name for name, value in (("--workers", options.workers),
                                          ("--address", options.address)) if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} "
                             "to --engine ray")
        return
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--workers must be at least 1; got {options.workers}")
    if not all(installed(package) for package in ("ray", "pyarrow")):
        raise UsageError(RAY_MISSING)
    if options.address is not None:
        check_address(options.address)


def installed(package: str) -> bool:
    """Whether `package` can be imported (without importing it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def check_address(address: str) -> None:
    """`auto`, or a `HOST:PORT` (with or without `ray://`) that accepts a connection
    within `CONNECT_SECONDS`.

    Raises:
        UsageError: Not of that form, or nothing answers there.
    """
    if address == "auto":
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UsageError(f"--address {address}: cannot reach {host}:{port} ({reason} within "
                         f"{CONNECT_SECONDS:g} s); is a Ray cluster running there?") from None


@contextmanager
def open_engine(options: EngineOptions) -> Iterator[Engine | None]:
    """The engine for one command: None for the local one (the caller's own code); for
    Ray, a session started (or joined) here and shut down after."""
    if options.kind is EngineKind.LOCAL:
        yield None
        return
    with ray_session(options) as engine:
        yield engine
