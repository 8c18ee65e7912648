"""The checking peer: the plain-Keras script that averages models and checks its result.

    python benchmarks/peer_merge_checked.py OUT MODEL MODEL [MODEL ...]

What `peer_merge.py` does (load every model, give each a unique name, feed one shared
input to all of them, scale each output by 1/n, add, save), then the check the seed
answer does: reload the saved file, predict on a small batch, and compare with the
members' own predictions, weighted and added. This is the script `fuse merge` (with
its verification) is measured against (DESIGN §7); `peer_merge.py` is the one
`fuse merge --no-verify` is measured against.
"""

import sys

import keras
import numpy as np

BATCH = 4


def main() -> None:
    out, paths = sys.argv[1], sys.argv[2:]
    members = [keras.saving.load_model(path, compile=False) for path in paths]
    for i, member in enumerate(members):
        member.name = f"member_{i}_{member.name}"  # two files may share a model name

    inputs = keras.Input(shape=members[0].inputs[0].shape[1:])
    weight = 1.0 / len(members)
    scaled = [keras.layers.Rescaling(weight)(member(inputs)) for member in members]
    outputs = keras.layers.Add()(scaled)
    keras.Model(inputs, outputs, name="ensemble").save(out)

    # The check: the saved file, reloaded, computes the weighted sum of the members.
    reloaded = keras.saving.load_model(out, compile=False)
    x = np.random.default_rng(0).random((BATCH, *inputs.shape[1:]), dtype=np.float32)
    expected = sum(weight * member.predict(x, verbose=0) for member in members)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    main()
