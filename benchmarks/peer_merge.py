"""The peer: the plain-Keras script users write today to average two or more models.

    python benchmarks/peer_merge.py OUT MODEL MODEL [MODEL ...]

Load every model, give each a unique name, feed one shared input to all of them,
scale each output by 1/n, add, save. No checks and no verification: this is the
floor `fuse merge` is measured against (DESIGN §7).
"""

import sys

import keras


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


if __name__ == "__main__":
    main()
