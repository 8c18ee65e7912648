"""`--engine ray`: the pass over the data on Ray Data, one actor pool per model.

The driver (this process) saves the model once, puts its bytes and the data's small
parts (an .npz file's arrays, a folder's file list) in Ray's object store, and maps
`fuse_cli.engines.ray_worker.Predictor` over the rows: `--workers` actors, each loading
the model once. A Parquet table is read by Ray Data itself (`read_parquet`), in the
order of its files and rows. Order is kept (`preserve_order`), and the driver checks it
anyway: every row comes back exactly once (a table's labels, passed through, equal the
labels read before the pass), or the pass is refused as an internal error. Ray retries
the batches of an actor that dies; a retried batch replaces, never adds, rows.

Without `--address`, Ray starts here (`address="local"`, this machine's cores, no
dashboard) and stops after; with one, the command joins that cluster and leaves it
running. Ray's banner, log lines and warnings stay off stderr unless `--debug`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import input_specs
from fuse_cli.data import Dataset
from fuse_cli.engines.ray_worker import FATAL, Predictor
from fuse_cli.errors import (
    DataError,
    DataLoadError,
    FuseError,
    IncompatibleModelsError,
    ModelLoadError,
    UsageError,
    first_line,
)
from fuse_cli.files import scratch_folder
from fuse_cli.image_pass import note_bad
from fuse_cli.images import ImageFolder, ImageOptions, image_inputs
from fuse_cli.native import quiet_native_logs
from fuse_cli.report import Advance
from fuse_cli.tables import ImageTable

if TYPE_CHECKING:
    from fuse_cli.engines import EngineOptions

MAX_BLOCKS = 256  # an .npz file's or a folder's rows are cut into at most this many blocks
_QUIET = {
    # Ray's C++ core worker in this process writes its warnings to stderr (an actor pool
    # always draws "constructor arguments in the object store"); they stay in Ray's logs.
    # It announces this level once, during ray.init, whose stderr is kept quiet for that.
    "RAY_BACKEND_LOG_LEVEL": "fatal",
    # Ray Data configures its own console handler (INFO) at import and at each execution;
    # this level wins over its configuration. Its log file keeps the same level.
    # (CRITICAL: it logs a worker's error at ERROR; fuse says it, on one line.)
    "RAY_DATA_LOG_LEVEL": "CRITICAL",
}


# A ray:// address that accepts the connection but does not answer as a Ray client: Ray
# tries 3 times, each attempt this many seconds (Ray's own maximum is 30), then gives up.
_CLIENT_TIMEOUTS = {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "3",
                    "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "3"}


@contextmanager
def ray_session(options: EngineOptions) -> Iterator[RayEngine]:
    """Start Ray here, or join `options.address`; shut it down (or leave) after. In a
    process that already runs Ray (fuse as a library), use that session and leave it.

    Raises:
        UsageError: The cluster cannot be joined (exit 2).
    """
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage statistics leave the machine
    for name, value in _CLIENT_TIMEOUTS.items():  # read when Ray is imported
        os.environ.setdefault(name, value)
    if not options.debug:
        for name, value in _QUIET.items():
            os.environ.setdefault(name, value)
    with quiet_native_logs(not options.debug):
        import ray
    level = logging.INFO if options.debug else logging.ERROR
    settings: dict[str, Any] = {"log_to_driver": options.debug, "logging_level": level,
                                "configure_logging": True}
    running = ray.is_initialized()  # a library caller's own session: used, left running
    try:
        if not running:
            with quiet_native_logs(not options.debug):
                _init(ray, options, settings)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"--address {options.address}" if options.address else "starting Ray here"
        raise UsageError(f"{where}: {first_line(exc)}") from None
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.execution_options.preserve_order
    context.enable_progress_bars = False  # fuse's own row shows rows done and rows/s
    context.execution_options.preserve_order = True
    engine = RayEngine(options)
    try:
        with _raylet_messages(engine.seen, enabled=not options.debug):
            yield engine
    finally:
        context.enable_progress_bars, context.execution_options.preserve_order = saved
        if not running:
            ray.shutdown()


@contextmanager
def _raylet_messages(seen: list[str], *, enabled: bool) -> Iterator[None]:
    """Keep the raylet's messages (a worker died, and so on) off stdout, where Ray prints
    them from a thread of its own and where they would break `--json`: collected for
    the report instead. Ray's private hook; without it, Ray prints as it does."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if not enabled or original is None:
        yield
        return

    def collect(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            seen.extend(str(line) for line in data.get("lines", []))
        else:
            original(data, ignore_prefix)

    worker.print_to_stdstream = collect
    try:
        yield
    finally:
        worker.print_to_stdstream = original


def _init(ray: Any, options: EngineOptions, settings: dict[str, Any]) -> None:
    if options.address is None:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, options.pool + 1),
                 include_dashboard=False, **settings)
    else:
        ray.init(address=options.address, **settings)


class RayEngine:
    """The Ray pass, for one command."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.seen: list[str] = []  # the raylet's messages, so far

    @property
    def notes(self) -> list[str]:
        """The raylet's messages as the report says them: workers that died (Ray ran
        their batches again; the rows were checked, none lost or repeated), or the first
        of anything else it said."""
        notes = []
        died = sum("worker died" in line.lower() for line in self.seen)
        if died:
            notes.append(f"Ray: {died} worker{'s' if died != 1 else ''} died during the "
                         "pass; Ray ran their batches again (every row came back once)")
        others = [line for line in self.seen
                  if not any(known in line.lower() for known in ("worker died", "retried"))]
        if others:
            notes.append(f"Ray: {first_line(others[0])}")
        return notes

    def outputs(self, model: Any, data: Any, *, label: str, batch_size: int,
                images: ImageOptions, advance: Advance | None) -> tuple[np.ndarray, np.ndarray]:
        """Run `model` over the data on Ray: the output rows and the data rows they
        belong to (sorted), as the local engine returns them.

        Raises:
            DataLoadError: An image that cannot be decoded (without `--skip-bad-images`).
            FuseError: What a worker raised (a model that refuses the data, say).
        """
        import ray

        with scratch_folder() as folder:
            path = folder / "model.keras"
            model.save(path)
            model_ref = ray.put(path.read_bytes())
        sizes = None if isinstance(data, Dataset) else image_inputs(input_specs(model), label)
        dataset, kind, source, expected = _dataset(data, batch_size)
        if not len(expected):  # every image of the folder was left out before the pass
            raise DataError(f"{data.path}: none of its {data.rows} images can be decoded")
        source_refs = [ray.put(source)] if source is not None else []
        mapped = dataset.map_batches(
            Predictor,
            fn_constructor_kwargs={"model": [model_ref], "source": source_refs, "kind": kind,
                                   "sizes": sizes, "images": images, "label": label,
                                   "unsafe": self.options.unsafe},
            batch_size=batch_size,
            batch_format="pyarrow" if kind == "table" else "numpy",
            compute=ray.data.ActorPoolStrategy(size=self.options.pool),
            num_cpus=1,
        )
        found = _collect(mapped, label, len(expected), advance)
        return _in_order(data, found, expected, images)


def _dataset(data: Any, batch_size: int) -> tuple[Any, str, Any, np.ndarray]:
    """The Ray dataset of the rows to run, the worker's kind, what the workers share, and
    the rows expected back."""
    import ray

    if isinstance(data, ImageTable):
        import pyarrow.fs

        # The parts are files fuse listed (on a cluster: a path every node mounts).
        table = ray.data.read_parquet(data.parts, columns=["image", "label"],
                                      filesystem=pyarrow.fs.LocalFileSystem())
        return table, "table", None, np.arange(data.rows)
    if isinstance(data, ImageFolder):
        rows = np.array([r for r in range(data.rows) if r not in data.bad], dtype=np.int64)
        source: Any = {"rows": rows, "files": np.array([data.files[r] for r in rows]),
                       "inside": os.path.realpath(data.path)}
    else:
        rows = np.arange(data.rows)
        source = list(data.inputs)
    blocks = max(1, min(MAX_BLOCKS, math.ceil(len(rows) / batch_size)))
    return ray.data.range(len(rows), override_num_blocks=blocks), (
        "folder" if isinstance(data, ImageFolder) else "npz"), source, rows


def _collect(mapped: Any, label: str, total: int,
             advance: Advance | None) -> dict[str, np.ndarray]:
    """Every block the pass returns, in order; the progress row fed as they come."""
    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    if advance is not None:
        advance(label, 0, total)
    try:
        for block in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            _raise_fatal(block.pop(FATAL, None))
            for key, value in block.items():
                parts.setdefault(key, []).append(np.asarray(value))
            done += len(block["row"])
            if advance is not None:
                advance(label, min(done, total), total)
    except Exception as exc:  # Ray wraps what a worker raised: fuse's own error is the reason
        raise _reason(exc) from None
    return {key: np.concatenate(values) for key, values in parts.items()}


def _raise_fatal(fatal: Any) -> None:
    """Raise again the first error a worker returned as data (`ray_worker.FATAL`)."""
    if fatal is None:
        return
    found = next((str(text) for text in fatal if text), None)
    if found is None:
        return
    name, _, message = found.partition("\t")
    kinds = {kind.__name__: kind for kind in (DataError, DataLoadError, IncompatibleModelsError,
                                              ModelLoadError, UsageError)}
    raise kinds.get(name, RuntimeError)(message)


def _reason(exc: BaseException) -> BaseException:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FuseError):
            return seen
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return exc


def _in_order(data: Any, found: dict[str, np.ndarray], expected: np.ndarray,
              images: ImageOptions) -> tuple[np.ndarray, np.ndarray]:
    """The outputs of the rows that ran, sorted by row; every expected row exactly once."""
    rows = found.get("row", np.zeros(0, np.int64))
    if isinstance(data, ImageTable):
        labels = found.get("label", np.zeros(0, np.int64))
        if not np.array_equal(labels, data.labels):
            raise RuntimeError(f"the Ray pass returned {len(labels)} rows of {data.name} "
                               "out of order or incomplete (their labels differ)")
        rows = np.arange(len(labels))
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    if not np.array_equal(rows, expected):
        raise RuntimeError(f"the Ray pass returned {len(rows)} rows for {len(expected)}: "
                           "rows lost or repeated")
    ok, errors, output = found["ok"][order], found["error"][order], found["output"][order]
    if not isinstance(data, Dataset):
        note_bad(data, rows, [None if ok_ else str(e) for ok_, e in zip(ok, errors, strict=True)],
                 images)
    if not ok.any():
        raise DataError(f"{data.path}: none of its {len(rows)} images can be decoded")
    return output[ok], rows[ok]
