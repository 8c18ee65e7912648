"""Build the benchmark's member models and save them: no training, no download.

Run by `run.py`; by hand:

    python benchmarks/make_members.py --out DIR --count 8 [--input-size 224 --alpha 1.0]

Writes `member_0.keras`, `member_1.h5`, `member_2.keras`, ... (formats alternate, so
every pair mixes a native `.keras` archive with a legacy `.h5`) and `members.json`
listing each file, its size and parameter count. Members are
`keras.applications.MobileNetV2(weights=None)` with different seeds, so their
weights differ; `weights=None` means nothing is downloaded. `--arch tiny` builds a
three-layer CNN instead, for checking the benchmark script quickly.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_member(seed: int, arch: str, input_size: int, alpha: float, classes: int):  # noqa: ANN201
    """One randomly initialized classifier (softmax output)."""
    import keras

    keras.utils.set_random_seed(seed)
    if arch == "tiny":
        inputs = keras.Input((input_size, input_size, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(classes, activation="softmax")(x)
        return keras.Model(inputs, outputs, name=f"tiny_{seed}")
    return keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3),
        alpha=alpha,
        weights=None,
        classes=classes,
        name=f"mobilenetv2_{seed}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the member files")
    parser.add_argument("--count", type=int, default=8, help="number of members (default 8)")
    parser.add_argument("--arch", choices=("mobilenetv2", "tiny"), default="mobilenetv2")
    parser.add_argument("--input-size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width (default 1.0)")
    parser.add_argument("--classes", type=int, default=1000, help="output classes (default 1000)")
    args = parser.parse_args()

    import warnings

    args.out.mkdir(parents=True, exist_ok=True)
    members = []
    for i in range(args.count):
        model = build_member(i, args.arch, args.input_size, args.alpha, args.classes)
        path = args.out / f"member_{i}.{'keras' if i % 2 == 0 else 'h5'}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ".h5 is a legacy format": chosen on purpose
            model.save(path)
        members.append(
            {"file": path.name, "size": path.stat().st_size, "params": int(model.count_params())}
        )
    manifest = {
        "architecture": "MobileNetV2" if args.arch == "mobilenetv2" else "tiny CNN",
        "input_shape": [args.input_size, args.input_size, 3],
        "alpha": args.alpha,
        "classes": args.classes,
        "members": members,
    }
    (args.out / "members.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
