"""`--recompute-bn`: a soup's BatchNormalization statistics estimated again from data.

The data is what `fuse evaluate` reads (an .npz file, or a folder of images with the
same options), streamed in batches; its labels are not used. See
`fuse_cli.soup.recompute_batchnorm` for the estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import input_specs
from fuse_cli.data import Dataset, check_inputs
from fuse_cli.evaluation import BATCH_SIZE, IMAGE_BATCH_SIZE, Data, read_any
from fuse_cli.formula import prediction_batch
from fuse_cli.images import ImageFolder, ImageOptions, image_batches, image_inputs
from fuse_cli.report import Progress
from fuse_cli.soup import recompute_batchnorm

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions


def recompute_on_data(
    model: keras.Model,
    label: str,
    options: MergeOptions,
    data: Data | None = None,
    say: Progress | None = None,
) -> dict[str, Any]:
    """Re-estimate `model`'s BatchNormalization statistics on `options.recompute_bn`.

    Args:
        model: The soup (changed in place).
        label: How to name the model in messages.
        options: The merge options: the data, its image options and batch size.
        data: The data already read (tune), else it is read here.
        say: Progress.

    Returns:
        What the provenance records: the data, its rows, the layers re-estimated.

    Raises:
        DataError, DataLoadError: The data cannot be read or does not fit the model.
    """
    assert options.recompute_bn is not None
    path = Path(options.recompute_bn)
    data = data if data is not None else read_any(path, options.images)
    say = say or (lambda _message: None)
    say(f"re-estimating BatchNormalization statistics on {data.name}")
    found = recompute_batchnorm(model, _batches(model, data, label, options), _rows)
    record: dict[str, Any] = {"data": data.name + ("/" if isinstance(data, ImageFolder) else ""),
                              **found}
    if isinstance(data, Dataset):
        from fuse_cli.formats import sha256_of

        record["sha256"] = sha256_of(data.path)
    return record


def _batches(model: keras.Model, data: Data, label: str, options: MergeOptions) -> Iterator[Any]:
    specs = input_specs(model)
    if isinstance(data, ImageFolder):
        sizes = image_inputs(specs, label)
        batch = prediction_batch(model, options.batch_size or IMAGE_BATCH_SIZE, label)
        rows = np.array([r for r in range(data.rows) if r not in data.bad], dtype=np.int64)
        images = options.images or ImageOptions()
        for found, _positions in image_batches(data, rows, sizes, images, batch):
            yield list(found) if isinstance(found, tuple) else found
        return
    check_inputs(data, specs, label)
    batch = prediction_batch(model, options.batch_size or BATCH_SIZE, label)
    for start in range(0, data.rows, batch):
        arrays = [x[start:start + batch] for x in data.inputs]
        yield arrays if len(arrays) > 1 else arrays[0]


def _rows(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list) else batch
    return int(first.shape[0])
