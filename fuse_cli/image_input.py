"""`--inputs image`: one raw-image input for members of different sizes and channels.

The merged model takes images at one size (the largest member's, by area) with three
channels, as pixel values; each member gets them through its own preprocessing, built
into the graph from Keras's own layers:

- `Resizing(h, w)` to the member's size (`--interpolation`, `--crop-to-aspect-ratio`, as
  the folder pass resizes), named `preprocess_<i>_resize`, where the sizes differ;
- a 1x1 `Conv2D` with the weights of `tf.image.rgb_to_grayscale` (0.2989, 0.5870,
  0.1140), no bias, named `preprocess_<i>_grayscale`, for a one-channel member;
- `Rescaling(scale, offset)` from `--rescale` / `--offset`, named
  `preprocess_<i>_rescale`: the preprocessing is baked in, so the file takes raw pixels.

`fuse tune` feeds each member through the same layers (`wrapped_members`), so the
scores it reports are the file's, and `fuse evaluate` on the same folder (without
`--rescale`) gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import InputPlan, TensorSpec, input_specs
from fuse_cli.errors import IncompatibleModelsError

if TYPE_CHECKING:
    import keras

    from fuse_cli.images import ImageOptions

GRAY = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights
PREFIX = "preprocess_"


def parse_scale(value: str | float | None) -> float | None:
    """`--rescale` (or a recipe's `rescale`): a number, or `1/255`, `1/127.5`, as text.

    Raises:
        UsageError: Not a finite number or fraction.
    """
    import math

    from fuse_cli.errors import UsageError

    if value is None:
        return None
    try:
        top, _, bottom = str(value).partition("/")
        found = float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--rescale: {value!r} is not a number or a fraction such as 1/255"
                         ) from None
    if not math.isfinite(found):
        raise UsageError(f"--rescale: {value!r} is not finite")
    return found


def plan_image(models: Sequence[keras.Model], labels: Sequence[str]) -> InputPlan:
    """One image input at the largest member's size, three channels.

    Raises:
        IncompatibleModelsError: A member that does not take one image of fixed size
            with 1 or 3 channels.
    """
    from fuse_cli.errors import DataError
    from fuse_cli.images import image_input

    sizes = []
    for model, label in zip(models, labels, strict=True):
        try:
            size = image_input(input_specs(model), label)
        except DataError as exc:
            raise IncompatibleModelsError(f"--inputs image: {exc}") from None
        if size[2] not in (1, 3):
            raise IncompatibleModelsError(
                f"--inputs image: {label} takes {size[2]} channels; members take grayscale "
                "(1) or RGB (3) images")
        sizes.append(size)
    height, width, _ = max(sizes, key=lambda s: s[0] * s[1])
    return InputPlan(shared=True, specs=[[TensorSpec((height, width, 3), "float32")]],
                     image=tuple(sizes))


def branch(tensor: Any, size: tuple[int, int, int], index: int,
           images: ImageOptions | None) -> Any:
    """Member `index`'s preprocessing of the merged model's image input."""
    import keras

    height, width, channels = size
    x = tensor
    if tuple(x.shape[1:3]) != (height, width):
        x = keras.layers.Resizing(
            height, width, interpolation=images.interpolation if images else "bilinear",
            crop_to_aspect_ratio=bool(images and images.crop_to_aspect_ratio),
            name=f"{PREFIX}{index}_resize")(x)
    if channels == 1:
        gray = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False,
                                   name=f"{PREFIX}{index}_grayscale")
        x = gray(x)
        gray.set_weights([np.array(GRAY, dtype=np.float32).reshape(1, 1, 3, 1)])
    if images is not None and (images.rescale is not None or images.offset is not None):
        x = keras.layers.Rescaling(1.0 if images.rescale is None else images.rescale,
                                   0.0 if images.offset is None else images.offset,
                                   name=f"{PREFIX}{index}_rescale")(x)
    return x


def branch_models(plan: InputPlan, images: ImageOptions | None) -> list[keras.Model]:
    """Each member's preprocessing as a model of its own (fresh layers, as the plan says)."""
    import keras

    (spec,) = plan.specs[0]
    found = []
    for i, size in enumerate(plan.image or ()):
        inputs = keras.Input(spec.shape, name="image")
        found.append(keras.Model(inputs, branch(inputs, size, i, images)))
    return found


def feeder(branches: Sequence[keras.Model]) -> Callable[[list[Any]], list[list[Any]]]:
    """The check batch (one image input) as each member's own inputs."""
    from fuse_cli.formula import run

    return lambda batch: [run(b, batch) for b in branches]


def wrapped_members(models: Sequence[keras.Model], plan: InputPlan,
                    images: ImageOptions | None) -> list[keras.Model]:
    """Each member behind its preprocessing: what the merged file runs it on."""
    import keras

    wrapped = []
    for branch_model, model in zip(branch_models(plan, images), models, strict=True):
        wrapped.append(keras.Model(branch_model.inputs, model(branch_model.outputs[0])))
    return wrapped


def pipeline_options(images: ImageOptions | None) -> ImageOptions | None:
    """The folder pass's options when the preprocessing is in the graph: no rescale."""
    return None if images is None else replace(images, rescale=None, offset=None)


def file_branches(model: keras.Model, members: Sequence[keras.Model]) -> list[keras.Model]:
    """A merged file's own preprocessing per member: its input to each member's input."""
    import keras

    from fuse_cli.formats._keras_private import inbound_nodes

    found = []
    for member in members:
        tensor = inbound_nodes(member)[0].input_tensors[0]
        found.append(keras.Model(model.inputs, tensor))
    return found


def is_image_file(model: keras.Model) -> bool:
    """Whether a merged file feeds its members through `preprocess_<i>_*` layers."""
    return any(str(layer.name).startswith(PREFIX) for layer in model.layers)
