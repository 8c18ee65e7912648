"""The Ray actor that runs one model over batches of rows (`--engine ray`).

Each actor loads the model once, from the bytes the driver put in Ray's object store,
with fuse's own screened loader, then takes batches of the data's rows:

- `npz`: row numbers; the arrays come from the object store, indexed here.
- `folder`: positions in the folder's list of image files; each file is screened here
  (a regular file inside the folder, its declared pixels) before it is read and decoded.
- `table`: a Parquet table's `image` and `label` columns, as Ray Data read them; each
  image is screened by its header before it is decoded.

It returns, for every row of the batch: the row, whether it decoded (and why not), the
model's output (zeros where it did not) and, for a table, the label as read, so that the
driver can check the order. Decoding is `fuse_cli.image_pass.decode_blobs`, the same
steps as the local engine's.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from fuse_cli.errors import DataError, FuseError, first_line
from fuse_cli.files import scratch_folder
from fuse_cli.image_pass import decode_blobs
from fuse_cli.images import refusal
from fuse_cli.tables import blobs_of

# Fault injection for the tests: an actor that finds this variable kills its own process
# (SIGKILL) in its first batch, once per marker file, so that Ray must restart it and run
# the batch again.
KILL_ONCE = "FUSE_RAY_KILL_ONCE"
# The column that carries fuse's own error out of a worker: "ClassName<TAB>message".
FATAL = "fatal"


class Predictor:
    """One model, loaded once per actor; called by Ray Data with each batch."""

    def __init__(self, *, model: list[Any], source: list[Any], kind: str, sizes: Any,
                 images: Any, label: str, unsafe: bool) -> None:
        import ray

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from fuse_cli.formats import load_model  # Keras: once the actor runs

        with scratch_folder() as folder:
            path = folder / "model.keras"
            path.write_bytes(ray.get(model[0]))
            self.model = load_model(path, unsafe=unsafe).model
        self.source: Any = ray.get(source[0]) if source else None
        self.kind, self.sizes, self.images, self.label = kind, sizes, images, label

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        """The batch's rows, whether each decoded, the outputs; or, for fuse's own error
        (Keras refusing the data, say), that error as data: Ray keeps only the text of
        what a worker raises, so the driver raises it again (`FATAL`)."""
        _kill_once()
        try:
            result = self._batch(batch)
        except FuseError as exc:
            count = len(batch["id"]) if self.kind != "table" else batch.num_rows
            result = self._run(np.full(count, -1, np.int64), [], ["not run"] * count)
            result[FATAL] = np.array([f"{type(exc).__name__}\t{exc}"] * count, dtype=object)
            return result
        result[FATAL] = np.array([""] * len(result["row"]), dtype=object)
        return result

    def _batch(self, batch: Any) -> dict[str, np.ndarray]:
        if self.kind == "npz":
            rows = np.asarray(batch["id"], dtype=np.int64)
            arrays = [x[rows] for x in self.source]
            return self._run(rows, arrays, [None] * len(rows))
        if self.kind == "folder":
            positions = np.asarray(batch["id"], dtype=np.int64)
            rows = self.source["rows"][positions]
            blobs, early = _read_files(self.source["files"][positions], self.source["inside"])
            return self._decoded(rows, blobs, early)
        labels = batch.column("label").to_numpy().astype(np.int64)
        result = self._decoded(np.full(len(labels), -1, np.int64),
                               blobs_of(batch.column("image")), [None] * len(labels))
        result["label"] = labels
        return result

    def _decoded(self, rows: np.ndarray, blobs: list[bytes],
                 early: list[str | None]) -> dict[str, np.ndarray]:
        readable = [i for i, reason in enumerate(early) if reason is None]
        images, reasons = decode_blobs([blobs[i] for i in readable], self.sizes, self.images)
        for i, reason in zip(readable, reasons, strict=True):
            early[i] = reason
        return self._run(rows, images, early)

    def _run(self, rows: np.ndarray, inputs: list[np.ndarray],
             reasons: list[str | None]) -> dict[str, np.ndarray]:
        ok = np.array([reason is None for reason in reasons], dtype=bool)
        output = None
        if ok.any():
            found = self._predict(inputs if len(inputs) > 1 else inputs[0])
            found = np.asarray(found[0] if isinstance(found, list | tuple) else found)
            output = np.zeros((len(rows), *found.shape[1:]), dtype=found.dtype)
            output[ok] = found
        else:
            shape = [d or 1 for d in self.model.outputs[0].shape[1:]]
            output = np.zeros((len(rows), *shape), dtype=np.float32)
        return {"row": rows, "ok": ok, "output": output,
                "error": np.array([reason or "" for reason in reasons], dtype=object)}


    def _predict(self, inputs: Any) -> Any:
        """Raises DataError: Keras refuses the data (as the local engine says it)."""
        try:
            return self.model.predict_on_batch(inputs)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{self.label}: cannot run on the data: {first_line(exc)}") from None


def _read_files(files: np.ndarray, inside: str) -> tuple[list[bytes], list[str | None]]:
    """Each image file screened as the local engine screens it, then read."""
    blobs: list[bytes] = []
    reasons: list[str | None] = []
    for file in files.tolist():
        reason = refusal(file, inside)
        blob = b""
        if reason is None:
            try:
                with open(file, "rb") as f:
                    blob = f.read()
            except OSError as exc:
                reason = f"cannot be read: {exc.strerror or exc}"
        blobs.append(blob)
        reasons.append(reason)
    return blobs, reasons


def _kill_once() -> None:
    marker = os.environ.get(KILL_ONCE)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
