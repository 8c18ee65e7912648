"""The peer of `images_bench.py`: each member's own `model.predict` over the same pipeline.

Reads the folder with fuse's `tf.data` pipeline (list, read, decode, resize, batch,
prefetch) and calls `model.predict(dataset)` per member: no scoring, no checks.

Usage: python benchmarks/images_peer.py FOLDER BATCH_SIZE MODEL [MODEL ...]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fuse_cli.image_pass import image_batches  # noqa: E402
from fuse_cli.images import ImageOptions, read_image_folder  # noqa: E402


def main() -> None:
    folder = read_image_folder(sys.argv[1])
    batch_size = int(sys.argv[2])
    for path in sys.argv[3:]:
        model = keras.saving.load_model(path, compile=False)
        size = tuple(model.input_shape[1:])
        rows = np.arange(folder.rows)
        images = image_batches(folder, rows, [size], ImageOptions(), batch_size).map(
            lambda x, _position: x)
        output = model.predict(images, verbose=0)
        print(path, output.shape)


if __name__ == "__main__":
    main()
