"""Write the legacy `.h5` fixtures of tests/fixtures/legacy with a real Keras 2 writer.

tf-keras (Keras 2 as a package) is not a project dependency; run this in an environment
of its own:

    python3 -m venv /tmp/tfkeras
    /tmp/tfkeras/bin/pip install tf-keras==2.21.0 tensorflow==2.21.0
    /tmp/tfkeras/bin/python scripts/make_legacy_fixtures.py

For each fixture it saves `<name>.h5` with tf-keras's own `model.save` and `<name>.npz`
with a fixed input `x` and the writer's predictions `y`, then writes `manifest.json`
and README.md (versions, sizes, forms). Weights are random with a fixed seed, so every
weight shows in the predictions.

Two forms are no longer written by any installable Keras: the Keras <= 2.2.2 Sequential
config stored as a bare list, and the Keras 2.2.3+ Sequential whose first layer carries
`batch_input_shape` with no InputLayer. For those, tf-keras writes the file and this
script rewrites its `model_config` (and `keras_version`) attributes exactly as those
versions stored them; weights and predictions stay tf-keras's own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers  # noqa: E402

log = logging.getLogger("make_legacy_fixtures")

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "legacy"
SEED = 20240501
LAMBDA_SENTINEL = "FUSE_LEGACY_LAMBDA_RAN"


@dataclass(frozen=True)
class Fixture:
    name: str
    build: Callable[[], tf_keras.Model]
    input_shape: tuple[int, ...]
    form: str
    keras3_plain: str
    rules: tuple[str, ...]  # the fuse_cli.formats.legacy_rules rules its migration needs
    rewrite_as: str | None = None  # the Keras version whose config form is emulated


# --- models -------------------------------------------------------------------------


def teachable_machine() -> tf_keras.Model:
    """The shape of a Teachable Machine `keras_model.h5`, tiny.

    A MobileNet-like Functional `model1` inside Sequential `sequential_1`, then a
    Sequential head `sequential_3` ending in softmax, all inside one more Sequential.
    The first block is frozen, as in fine-tuning, so the nested model's saved weight
    order (trainable first, then frozen) differs from its layer order.
    """
    inp = layers.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="Conv1")(inp)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="expanded_conv_depthwise")(x)
    x = layers.BatchNormalization(name="expanded_conv_depthwise_BN")(x)
    x = layers.ReLU(6.0, name="expanded_conv_depthwise_relu")(x)
    x = layers.Conv2D(16, 1, use_bias=False, name="expanded_conv_project")(x)
    x = layers.BatchNormalization(name="expanded_conv_project_BN")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d_GlobalAveragePooling2D1")(x)
    base = tf_keras.Model(inp, x, name="model1")
    for name in ("Conv1", "bn_Conv1"):
        base.get_layer(name).trainable = False
    features = tf_keras.Sequential([base], name="sequential_1")
    head = tf_keras.Sequential(
        [
            layers.Dense(12, activation="relu", input_shape=(16,), name="dense_Dense1"),
            layers.Dense(3, activation="softmax", name="dense_Dense2"),
        ],
        name="sequential_3",
    )
    return tf_keras.Sequential([features, head], name="sequential_4")


def conv_variants() -> tf_keras.Model:
    """DepthwiseConv2D, SeparableConv2D, SpatialDropout2D and Conv2DTranspose in a row."""
    inp = layers.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.SeparableConv2D(6, 3, activation="relu")(x)
    x = layers.SpatialDropout2D(0.2)(x)
    x = layers.Conv2DTranspose(4, 3, strides=2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3, activation="softmax")(x)
    return tf_keras.Model(inp, out, name="conv_variants")


def rnn_stack() -> tf_keras.Model:
    """LSTM (in Bidirectional), GRU and SimpleRNN: every config carries `time_major`."""
    return tf_keras.Sequential(
        [
            layers.Input((6, 4)),
            layers.Bidirectional(layers.LSTM(5, return_sequences=True)),
            layers.GRU(4, return_sequences=True),
            layers.SimpleRNN(3),
            layers.Dense(2),
        ],
        name="rnn_stack",
    )


def keras22_cnn() -> tf_keras.Model:
    """The 60x60x1 CNN of the issue; layer names as standalone Keras 2 numbered them."""
    return tf_keras.Sequential(
        [
            layers.Input((60, 60, 1)),
            layers.Conv2D(4, 3, activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Dropout(0.25, name="dropout_1"),
            layers.Flatten(name="flatten_1"),
            layers.Dense(8, activation="relu", name="dense_1"),
            layers.Dense(3, activation="softmax", name="dense_2"),
        ],
        name="sequential_1",
    )


def keras20_cnn() -> tf_keras.Model:
    return tf_keras.Sequential(
        [
            layers.Input((12, 12, 1)),
            layers.Conv2D(4, 3, activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Conv2D(6, 3, activation="relu", name="conv2d_2"),
            layers.GlobalAveragePooling2D(name="global_average_pooling2d_1"),
            layers.Dense(3, activation="softmax", name="dense_1"),
        ],
        name="sequential_1",
    )


def _lambda_model(name: str) -> tf_keras.Model:
    # The lambda leaves a trace when it runs, so a test can prove loading never ran it.
    # It names everything literally: its bytecode is all the file keeps of it.
    def doubles_and_marks(x: tf.Tensor) -> tf.Tensor:
        return (__import__("os").environ.__setitem__("FUSE_LEGACY_LAMBDA_RAN", "1"), x * 2.0)[1]

    return tf_keras.Sequential(
        [
            layers.Input((3,)),
            layers.Dense(4, name="dense_1"),
            layers.Lambda(doubles_and_marks, name="lambda_1"),
            layers.Dense(2, name="dense_2"),
        ],
        name=name,
    )


def lambda_tfkeras() -> tf_keras.Model:
    return _lambda_model("sequential_lambda")


def lambda_keras20() -> tf_keras.Model:
    return _lambda_model("sequential_1")


FIXTURES = (
    Fixture(
        "teachable_machine",
        teachable_machine,
        (32, 32, 3),
        "Teachable Machine shape: MobileNet-like Functional (DepthwiseConv2D, "
        "BatchNormalization, ReLU6; first block frozen) in a nested Sequential, then a "
        "nested Sequential head ending in softmax",
        "refused: `Could not locate class 'Functional'` (nested model annotated with "
        "module `tf_keras.src.engine.functional`); after that, `Unrecognized keyword "
        "arguments passed to DepthwiseConv2D: {'groups': 1}`",
        ("keras2_module_paths", "conv_groups"),
    ),
    Fixture(
        "conv_variants",
        conv_variants,
        (16, 16, 3),
        "flat Functional: Conv2D, DepthwiseConv2D, SeparableConv2D, SpatialDropout2D, "
        "Conv2DTranspose, softmax head",
        "refused: `Error when deserializing class 'DepthwiseConv2D'` (`groups: 1`); "
        "then SeparableConv2D (`groups`, `kernel_*`), SpatialDropout2D (`trainable`), "
        "Conv2DTranspose (`groups`)",
        ("conv_groups", "separable_conv_kernel_arguments", "spatial_dropout_arguments"),
    ),
    Fixture(
        "rnn_time_major",
        rnn_stack,
        (6, 4),
        "Sequential: Bidirectional(LSTM), GRU, SimpleRNN, Dense",
        "refused: `Unrecognized keyword arguments passed to LSTM: {'time_major': False}`",
        ("rnn_time_major",),
    ),
    Fixture(
        "keras22_sequential",
        keras22_cnn,
        (60, 60, 1),
        "Keras 2.2.3+ Sequential: no InputLayer, first layer (Conv2D) carries `batch_input_shape`",
        "refused: `Kernel shape must have the same length as input, but received kernel "
        "of shape (3, 3, 1, 4) and input of shape (None, None, 60, 60, 1)`",
        ("sequential_input_layer",),
        rewrite_as="2.2.4",
    ),
    Fixture(
        "keras20_list",
        keras20_cnn,
        (12, 12, 1),
        "Keras <= 2.2.2 Sequential: config is a bare list of layers, first layer "
        "carries `batch_input_shape`",
        "refused: `pop expected at most 1 argument, got 2`",
        ("sequential_list_config", "sequential_input_layer"),
        rewrite_as="2.0.8",
    ),
    Fixture(
        "lambda_tfkeras",
        lambda_tfkeras,
        (3,),
        "Sequential with a Lambda layer holding marshalled Python code (needs no migration)",
        "refused in safe mode: ``Requested the deserialization of a `Lambda` layer whose "
        "`function` is a Python lambda`` (the message points at `safe_mode=False`)",
        (),
    ),
    Fixture(
        "lambda_keras20_list",
        lambda_keras20,
        (3,),
        "Keras <= 2.2.2 list-form Sequential with a Lambda layer holding marshalled Python "
        "code (needs migration before Keras reaches the Lambda)",
        "refused: `pop expected at most 1 argument, got 2` (before reaching the Lambda)",
        ("sequential_list_config", "sequential_input_layer"),
        rewrite_as="2.0.8",
    ),
)


# --- the old config forms -----------------------------------------------------------

# The keys each layer's get_config() returned in standalone Keras 2.0.8–2.2.4 (after
# `name`, `trainable`, and on the first layer `batch_input_shape` and `dtype`).
_KERAS2_KEYS = {
    "Conv2D": (
        "filters kernel_size strides padding data_format dilation_rate activation use_bias "
        "kernel_initializer bias_initializer kernel_regularizer bias_regularizer "
        "activity_regularizer kernel_constraint bias_constraint"
    ),
    "Dense": (
        "units activation use_bias kernel_initializer bias_initializer kernel_regularizer "
        "bias_regularizer activity_regularizer kernel_constraint bias_constraint"
    ),
    "MaxPooling2D": "pool_size padding strides data_format",
    "Dropout": "rate noise_shape seed",
    "Flatten": "data_format",
    "GlobalAveragePooling2D": "data_format",
    "Lambda": "function function_type output_shape output_shape_type arguments",
}

_KERAS2_INITIALIZERS = {
    # Keras 2.0–2.2 serialized glorot_uniform as the VarianceScaling it is.
    "GlorotUniform": {
        "class_name": "VarianceScaling",
        "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None},
    },
    "Zeros": {"class_name": "Zeros", "config": {}},
}


def _keras2_value(value: Any) -> Any:
    if isinstance(value, dict) and value.get("module") == "keras.initializers":
        return _KERAS2_INITIALIZERS[value["class_name"]]
    return value


def _keras2_layer(entry: dict[str, Any], *, first: bool, batch_shape: list[Any]) -> dict[str, Any]:
    class_name = entry["class_name"]
    config = entry["config"]
    old: dict[str, Any] = {"name": config["name"], "trainable": config["trainable"]}
    if first:
        old["batch_input_shape"] = batch_shape
        old["dtype"] = "float32"
    for key in _KERAS2_KEYS[class_name].split():
        old[key] = _keras2_value(config[key])
    return {"class_name": class_name, "config": old}


def _rewrite_config(path: Path, version: str) -> None:
    """Store the model config the way standalone Keras `version` stored it."""
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        entries = config["config"]["layers"]
        assert entries[0]["class_name"] == "InputLayer", entries[0]
        batch_shape = entries[0]["config"]["batch_input_shape"]
        old_layers = [
            _keras2_layer(entry, first=i == 0, batch_shape=batch_shape)
            for i, entry in enumerate(entries[1:])
        ]
        if version.startswith(("2.0", "2.1")) or version in ("2.2.0", "2.2.1", "2.2.2"):
            body: Any = old_layers  # Sequential.get_config() returned the bare list
        else:
            body = {"name": config["config"]["name"], "layers": old_layers}
        old_config = {"class_name": "Sequential", "config": body}
        f.attrs["model_config"] = json.dumps(old_config).encode("utf8")
        f.attrs["keras_version"] = version.encode("utf8")
        f["model_weights"].attrs["keras_version"] = version.encode("utf8")


# --- writing ------------------------------------------------------------------------


def _randomize(model: tf_keras.Model, rng: np.random.Generator) -> None:
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.name:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.4, shape)
        variable.assign(value.astype(np.float32))


def write_fixture(fixture: Fixture, out: Path, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tf_keras.backend.clear_session()
    model = fixture.build()
    _randomize(model, rng)
    x = rng.random((4, *fixture.input_shape), dtype=np.float32)
    y = model.predict(x, verbose=0)
    os.environ.pop(LAMBDA_SENTINEL, None)
    h5 = out / f"{fixture.name}.h5"
    model.save(h5, save_format="h5", include_optimizer=False)
    if fixture.rewrite_as:
        _rewrite_config(h5, fixture.rewrite_as)
    np.savez(out / f"{fixture.name}.npz", x=x, y=y)
    with h5py.File(h5, "r") as f:
        attr = f.attrs["keras_version"]
        keras_version = attr.decode() if isinstance(attr, bytes) else str(attr)
    return {
        "file": h5.name,
        "bytes": h5.stat().st_size,
        "sha256": hashlib.sha256(h5.read_bytes()).hexdigest(),
        "form": fixture.form,
        "keras_version_attribute": keras_version,
        "config_rewritten_as": fixture.rewrite_as,
        "rules": list(fixture.rules),
        "keras_3_15_1_plain_load": fixture.keras3_plain,
        "input_shape": [4, *fixture.input_shape],
        "output_shape": list(y.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    writer = {
        "tf_keras": tf_keras.__version__,
        "tensorflow": tf.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    fixtures = {}
    for index, fixture in enumerate(FIXTURES):
        fixtures[fixture.name] = write_fixture(fixture, args.out, SEED + index)
        log.info("%s: %d bytes", fixture.name, fixtures[fixture.name]["bytes"])
    manifest = {"writer": writer, "seed": SEED, "fixtures": fixtures}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out / "README.md").write_text(render_readme(manifest))


def render_rules(manifest: dict[str, Any]) -> str:
    """One entry per fuse rewrite rule: its docstring, and the fixtures that need it."""
    import inspect
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuse_cli.formats import legacy_rules as legacy  # pure Python: no Keras, no TensorFlow

    entries = []
    for rule in legacy.RULES:
        name = legacy.rule_name(rule)
        doc = inspect.getdoc(rule) or ""
        summary, _, body = doc.partition("\n\n")
        users = [
            f"`{info['file']}`" for info in manifest["fixtures"].values() if name in info["rules"]
        ]
        body = " ".join(body.split())
        entries.append(f"- **`{name}`** — {summary} {body} Fixtures: {', '.join(users)}.")
    return "\n".join(entries)


def render_readme(manifest: dict[str, Any]) -> str:
    writer = manifest["writer"]
    rows = []
    for info in manifest["fixtures"].values():
        rewritten = (
            f"tf-keras, config rewritten as Keras {info['config_rewritten_as']}"
            if info["config_rewritten_as"]
            else "tf-keras"
        )
        rows.append(
            f"| `{info['file']}` | {info['bytes'] / 1024:.1f} KB | {rewritten} | "
            f"`{info['keras_version_attribute']}` | {info['form']} | "
            f"{info['keras_3_15_1_plain_load']} |"
        )
    table = "\n".join(rows)
    return README.format(
        rules=render_rules(manifest),
        tf_keras=writer["tf_keras"],
        tensorflow=writer["tensorflow"],
        python=writer["python"],
        h5py=writer["h5py"],
        numpy=writer["numpy"],
        seed=manifest["seed"],
        table=table,
        sentinel=LAMBDA_SENTINEL,
    )


README = """\
# Legacy `.h5` fixtures

Written by `scripts/make_legacy_fixtures.py` (do not edit by hand; rerun it). Each
`<name>.h5` is a model saved by a real Keras 2 writer; `<name>.npz` holds a fixed input
`x` (batch of 4) and the writer's predictions `y` on it. `manifest.json` has the same
facts in machine form, with each file's SHA-256.

Writer: **tf-keras {tf_keras}** (Keras 2 as a package) on TensorFlow {tensorflow},
Python {python}, h5py {h5py}, numpy {numpy}, in an environment of its own (tf-keras is
not a project dependency). Weights are random with seed {seed}, so every weight shows in
the predictions. Files were saved with tf-keras's `model.save(..., save_format="h5")`.

| file | size | written by | `keras_version` attribute | form | plain Keras 3.15.1 `load_model` |
| --- | --- | --- | --- | --- | --- |
{table}

## The rewrite rules (fuse_cli/formats/legacy_rules.py) and the writers they cover

Applied in this order, each only when plain Keras 3 failed on the file (or, for
`sequential_input_layer`, would misread it silently):

{rules}

## Forms no installable writer produces any more

No Keras that installs on a current Python writes these two forms, so tf-keras wrote the
model, weights and predictions, and the script then rewrote the file's `model_config`
attribute exactly as those versions stored it, and set the `keras_version` attributes
(root and `model_weights`) to the emulated version:

- `keras22_sequential.h5` — Keras 2.2.3–2.2.5 form (`{{"name", "layers"}}`, since
  keras-team/keras#11133): no InputLayer; the first layer's config carries
  `batch_input_shape` and `dtype`, later layers carry neither; layer configs have the
  Keras 2 keys only (no `module`, `registered_name`, `build_config`, `groups`), and
  `glorot_uniform` is stored as `VarianceScaling(scale=1, mode=fan_avg,
  distribution=uniform)`. Modelled on a real 2.2.4 config.
- `keras20_list.h5`, `lambda_keras20_list.h5` — Keras 2.0–2.2.2 form: the Sequential's
  `config` is the bare list of layer configs (no model name), the same layer-config
  keys. The Lambda keeps tf-keras's marshalled function (`[code, defaults, closure]`,
  the format Keras 2 used as well).

## The Lambda fixtures

`lambda_tfkeras.h5` and `lambda_keras20_list.h5` hold a Python function (marshalled
bytecode, as Keras 2 stored every Lambda) that sets the environment variable
`{sentinel}` when it runs; building the model would run it. Loading them in safe mode must
fail with exit 3 and leave that variable unset: the tests check both. The marshalled
bytecode is Python {python}'s and loads only there, so the one test that loads a Lambda
with safe mode *off* first rewrites `lambda_keras20_list.h5`'s function with the running
Python's bytecode: it runs on every supported Python.
"""


if __name__ == "__main__":
    main()
