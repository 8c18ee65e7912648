"""Refusals: legacy configs no rewrite rule makes exact, one function each.

Where a Keras 2 file relies on a computation Keras 3 cannot reproduce, the file is
refused (exit 3, naming the layer and why) rather than loaded as another function:
"exactly or not at all" (DESIGN §4). Each refusal reads the decoded `model_config` and
the writer's Keras version and returns the reason, or None.
"""

from __future__ import annotations

from collections.abc import Callable

from fuse_cli.formats.legacy_rules import Config, objects

Refusal = Callable[[Config, str], "str | None"]


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """`(2, 2, 4)` of `2.2.4` or `2.2.4-tf`; None when no release can be read."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version.split("-", 1)[0]).release
    except InvalidVersion:
        return None


def _resizes_like_tensorflow_1(version: str) -> bool:
    """Whether Keras `version` resized images with TF 1's `resize_bilinear` (or may have)."""
    numbers = _version_tuple(version)
    if numbers is None:
        return True  # no version recorded: the writer cannot be placed
    if version.endswith("-tf"):
        return numbers <= (2, 2, 4)  # tf.keras of TF 1.x (2.2.4-tf is TF 1.13–2.0)
    return numbers < (2, 4)  # standalone Keras; 2.4+ is tf.keras of TF 2.2+


def refuse_tf1_bilinear_upsampling(config: Config, version: str) -> str | None:
    """Refuse a bilinear UpSampling2D written by a Keras that resized like TensorFlow 1.

    Writers: standalone Keras 2.2.3–2.3.1 (which added `interpolation`) and tf.keras of
    TF 1.x (`2.1.6-tf`, `2.2.4-tf`), whose `resize_images` called TF 1's
    `resize_bilinear` without half-pixel centers; a file with no `keras_version` too,
    since its writer cannot be placed. Keras 3.15.1 (like tf.keras of TF 2 and
    tf-keras, hence the corpus references) resizes with `tf.image.resize`, which
    samples at half-pixel centers: the same weights compute another function, and it
    loads without an error. No rewrite can express the old sampling with Keras 3's
    layers, so the file is refused, naming the layer. `nearest` (the default) computes
    the same in both and loads.
    """
    if not _resizes_like_tensorflow_1(version):
        return None
    for obj in objects(config):
        body = obj["config"]
        if obj["class_name"] != "UpSampling2D" or not isinstance(body, dict):
            continue
        if body.get("interpolation") == "bilinear":
            return (
                f"layer {body.get('name')!r} (UpSampling2D, bilinear) was computed by "
                f"Keras {version} with TensorFlow 1's resize_bilinear, which Keras 3 does "
                "not reproduce (it samples at half-pixel centers)"
            )
    return None


def refuse_tf_op_layers(config: Config, version: str) -> str | None:
    """Refuse the layers tf.keras made from TensorFlow functions (`TFOpLambda`).

    Writers: tf.keras 2.4–2.15 and tf-keras (seen with 2.10.0 and 2.12.0), which record
    a TensorFlow function called on a Keras tensor (`tf.gather(x, ...)`, `x[:, 0]`) as
    a `TFOpLambda` or `SlicingOpLambda` layer naming the function (`compat.v1.gather`,
    `__operators__.getitem`). Keras 3.15.1 has no such layers and fails with `Unknown
    layer: 'SlicingOpLambda'`; building them would mean calling TensorFlow functions the
    file names, and no rule maps them to Keras 3 operations exactly. The refusal names
    the layer and the function.
    """
    for obj in objects(config):
        body = obj["config"]
        if obj["class_name"] in ("TFOpLambda", "SlicingOpLambda") and isinstance(body, dict):
            return (
                f"layer {body.get('name')!r} ({obj['class_name']}) calls the TensorFlow "
                f"function {body.get('function')!r} by name, which Keras 3 cannot build"
            )
    return None


REFUSALS: tuple[Refusal, ...] = (refuse_tf1_bilinear_upsampling, refuse_tf_op_layers)


def refusal(config: Config, version: str) -> str | None:
    """Why `config`, written by Keras `version`, cannot be loaded exactly; None if it can."""
    for check in REFUSALS:
        reason = check(config, version)
        if reason:
            return reason
    return None


