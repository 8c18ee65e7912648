"""`--mode soup`: the members' variables averaged into one model, and `fuse tune --mode
soup` measuring soups against the members and the output ensemble.

Members are really fine-tuned from one saved start on the bundled digits (`soups.py`);
every number is checked against numpy or the members' own predictions.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import soups
from helpers import load, validated
from typer.testing import CliRunner

from fuse_cli import soup
from fuse_cli.cli import app
from fuse_cli.errors import IncompatibleModelsError
from fuse_cli.soup_tuning import greedy


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three members fine-tuned from one start, two trained from their own starts."""
    folder = tmp_path_factory.mktemp("soup")
    return {
        "runs": soups.fine_tuned_members(folder, 3, rows=600),
        "independent": soups.independent_members(folder, 2, epochs=3, rows=600),
        "held": soups.held_out(folder),
    }


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def weights_of(path: Path) -> list[np.ndarray]:
    return [np.asarray(v) for v in load(path).get_weights()]


def numpy_average(paths: list[Path], weights: list[float]) -> list[np.ndarray]:
    """The test's own reference: Σ w_i·θ_i in float64, member order, rounded once."""
    members = [weights_of(p) for p in paths]
    total = sum(w / sum(weights) for w in weights)
    assert total == pytest.approx(1.0)
    out = []
    for k in range(len(members[0])):
        acc = np.zeros(members[0][k].shape, np.float64)
        for w, m in zip(weights, members, strict=True):
            acc += np.float64(w / sum(weights)) * m[k].astype(np.float64)
        out.append(acc.astype(members[0][k].dtype))
    return out


def scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and log-loss as Keras computes them (rows renormalized, clipped)."""
    q = p / p.sum(axis=1, keepdims=True)
    chosen = np.clip(q[np.arange(len(y)), y], 1e-7, 1 - 1e-7)
    return float(np.mean(p.argmax(axis=1) == y)), float(-np.mean(np.log(chosen)))


def test_merge_writes_the_numpy_weighted_average_in_plain_keras(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    runs = trained["runs"]
    out = tmp_path / "soup.keras"
    result = invoke("merge", *runs, "--mode", "soup", "--weights", "0.2,0.3,0.5", "-o", out,
                    "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["mode"] == "soup" and report["loads_without_fuse"] is True
    assert report["built"]["soup"]["batchnorm"] == {"statistics": "averaged"}
    # Without data fuse cannot know whether the average is good, and says so once.
    assert sum("fuse tune --mode soup" in w for w in report["warnings"]) == 1
    written = weights_of(out)
    expected = numpy_average(runs, [0.2, 0.3, 0.5])
    assert len(written) == len(expected) == len(weights_of(runs[0]))
    for a, e in zip(written, expected, strict=True):
        assert a.dtype == e.dtype and np.array_equal(a, e)  # bit for bit
    # One model of the members' architecture, nothing of fuse in it.
    model = load(out)
    assert [type(layer).__name__ for layer in model.layers] == [
        type(layer).__name__ for layer in load(runs[0]).layers]
    with zipfile.ZipFile(out) as zf:
        record = json.loads(zf.read("fuse.json"))
        assert "fuse" not in zf.read("config.json").decode()
    assert record["mode"] == "soup" and record["weights"] == pytest.approx([0.2, 0.3, 0.5])
    assert [m["file"] for m in record["members"]] == [p.name for p in runs]


def test_a_soup_of_fine_tuned_members_is_close_to_them_and_of_independent_ones_is_not(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    held = np.load(trained["held"])
    x, y = held["x"], held["y"]
    accuracy = {}
    for name, members in (("runs", trained["runs"]), ("independent", trained["independent"])):
        out = tmp_path / f"{name}.keras"
        assert invoke("merge", *members, "--mode", "soup", "-o", out).exit_code == 0
        best = max(scores(load(p).predict(x, verbose=0), y)[0] for p in members)
        accuracy[name] = (scores(load(out).predict(x, verbose=0), y)[0], best)
    # Measured, not assumed: the average of one basin stays near its members...
    assert accuracy["runs"][0] > accuracy["runs"][1] - 0.05
    # ...and averaging two independent networks loses much of what each had.
    assert accuracy["independent"][0] < accuracy["independent"][1] - 0.05


def test_a_different_architecture_is_exit_4_naming_the_layer(tmp_path: Path) -> None:
    def model(units: int) -> keras.Model:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="hidden"),
                                 keras.layers.Dense(3, activation="softmax", name="out")])

    model(8).save(tmp_path / "a.keras")
    model(9).save(tmp_path / "b.keras")
    result = invoke("merge", tmp_path / "a.keras", tmp_path / "b.keras", "--mode", "soup",
                    "-o", tmp_path / "s.keras")
    assert result.exit_code == 4
    assert "layer 'hidden' (Dense) differs: units 9 vs 8" in result.stderr
    assert not (tmp_path / "s.keras").exists()


class Counter(keras.layers.Layer):
    """A layer with an integer variable (as a step counter is), for the rule that
    integers are never averaged."""

    def __init__(self, start: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start = start
        self.count = self.add_weight(shape=(), dtype="int32", trainable=False,
                                     initializer=keras.initializers.Constant(start))

    def call(self, inputs: Any) -> Any:
        return inputs


def test_integer_variables_must_be_equal_and_are_copied() -> None:
    def model(start: int, seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(2)(Counter(start)(inputs)))

    a, b, c = model(5, 1), model(5, 2), model(5, 3)
    counter = next(v for v in c.weights if v.dtype == "int32")
    counter.assign(6)  # e.g. a step count that moved on
    soup.check_architecture([a, b], ["a", "b"])  # equal integers: fine
    floats = [soup.is_float(v) for v in soup.variables(a)]
    assert floats.count(False) == 1
    values = soup.soup_values([soup.values(a), soup.values(b)], floats, [0.5, 0.5])
    assert values[floats.index(False)] == 5
    with pytest.raises(IncompatibleModelsError, match="int32.*not averaged") as caught:
        soup.check_architecture([a, c], ["a", "c"])
    assert caught.value.exit_code == 4


def _bn_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="d1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.5)(h)  # off while the statistics are estimated
    h = keras.layers.Dense(2, name="d2")(h)
    return keras.Model(inputs, keras.layers.BatchNormalization(name="bn2")(h))


def _numpy_batchnorm(model: keras.Model, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """SWA's estimate in numpy: every batch normalized by its own statistics, the
    means and (biased) variances averaged over batches, weighted by their rows."""
    w = {layer.name: [np.asarray(v, np.float64) for v in layer.get_weights()]
         for layer in model.layers}
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(x), batch):
        part = x[start:start + batch].astype(np.float64)
        h = part @ w["d1"][0] + w["d1"][1]
        m1, v1 = h.mean(0), h.var(0)
        gamma, beta = w["bn1"][0], w["bn1"][1]
        h = np.maximum((h - m1) / np.sqrt(v1 + 1e-3) * gamma + beta, 0)
        h = h @ w["d2"][0] + w["d2"][1]
        for key, value in (("bn1/mean", m1), ("bn1/var", v1), ("bn2/mean", h.mean(0)),
                           ("bn2/var", h.var(0))):
            sums[key] = sums.get(key, 0) + value * len(part)
    return {key: value / len(x) for key, value in sums.items()}


def test_recompute_bn_matches_numpy(tmp_path: Path) -> None:
    a, b = _bn_model(1), _bn_model(2)
    a.save(tmp_path / "a.keras")
    b.save(tmp_path / "b.keras")
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(50, np.int64))
    out = tmp_path / "soup.keras"
    result = invoke("merge", tmp_path / "a.keras", tmp_path / "b.keras", "--mode", "soup",
                    "--recompute-bn", "--data", tmp_path / "d.npz", "--batch-size", 16,
                    "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    found = validated(result.stdout)["built"]["soup"]["batchnorm"]
    assert (found["statistics"], found["layers"], found["rows"], found["batches"]) == (
        "recomputed", 2, 50, 4)
    model = load(out)
    expected = _numpy_batchnorm(model, x, 16)  # from the soup's own averaged weights
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        np.testing.assert_allclose(layer.moving_mean, expected[f"{name}/mean"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance, expected[f"{name}/var"],
                                   rtol=1e-5, atol=1e-6)
    # Every other variable is still the plain average; Dropout and trainable restored.
    average = numpy_average([tmp_path / "a.keras", tmp_path / "b.keras"], [1, 1])
    for variable, want in zip(model.weights, average, strict=True):
        if "moving" not in variable.path:
            assert np.array_equal(np.asarray(variable), want)


def _reference_greedy(keys: dict[tuple[int, ...], float], n: int) -> tuple[int, ...]:
    """The greedy-soup rule as the paper states it, written out plainly."""
    ranked = sorted(range(n), key=lambda i: (keys[(i,)], i))
    chosen = [ranked[0]]
    for i in ranked[1:]:
        trial = tuple(sorted([*chosen, i]))
        if keys[trial] <= keys[tuple(sorted(chosen))]:
            chosen = list(trial)
    return tuple(sorted(chosen))


@pytest.mark.parametrize("seed", range(20))
def test_greedy_selection_matches_references_on_saved_scores(seed: int) -> None:
    n = 6
    rng = np.random.default_rng(seed)
    subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    keys = {s: float(rng.random()) for s in subsets}  # saved scores of every soup
    found = greedy(n, lambda i: keys[(i,)], lambda s: keys[s])
    assert found == _reference_greedy(keys, n)
    # Where each member's effect adds up, greedy finds the brute-force best soup that
    # contains the best member.
    effect = rng.normal(size=n)
    additive = {s: float(sum(effect[i] for i in s)) for s in subsets}
    best = min(range(n), key=lambda i: additive[(i,)])
    brute = min((s for s in subsets if best in s), key=lambda s: additive[s])
    assert greedy(n, lambda i: additive[(i,)], lambda s: additive[s]) == brute


def test_tune_puts_every_candidate_side_by_side_honestly(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    runs, data = trained["runs"], trained["held"]
    out = tmp_path / "tuned.keras"
    result = invoke("tune", *runs, "--mode", "soup", "--data", data, "--cv", 0,
                    "--even-if-worse", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    held = np.load(data)
    x, y = held["x"], held["y"]
    entries = {e["name"]: e for e in report["entries"]}
    assert report["scored_on"] == "in-sample" and report["scored_rows"] == len(y)
    member_scores = {}
    for path in runs:  # each member's row: its own predictions, scored by numpy
        member_scores[path.name] = scores(load(path).predict(x, verbose=0), y)
        entry = entries[path.name]
        assert entry["forward_passes"] == 1
        assert entry["accuracy"] == pytest.approx(member_scores[path.name][0])
        assert entry["log_loss"] == pytest.approx(member_scores[path.name][1], rel=1e-4)
    best = min(member_scores.values(), key=lambda s: s[1])
    assert entries["best member"]["log_loss"] == pytest.approx(best[1], rel=1e-4)
    assert entries["output ensemble"]["forward_passes"] >= 1
    # The uniform soup's row is the uniform soup fuse merge writes.
    uniform = tmp_path / "uniform.keras"
    assert invoke("merge", *runs, "--mode", "soup", "-o", uniform).exit_code == 0
    want = scores(load(uniform).predict(x, verbose=0), y)
    assert entries["uniform soup"]["log_loss"] == pytest.approx(want[1], rel=1e-4)
    # The file written is the chosen soup, and scores as its row says.
    chosen = entries[report["chosen"]]
    assert report["written"] and chosen["forward_passes"] == 1
    got = scores(load(out).predict(x, verbose=0), y)
    assert got[1] == pytest.approx(chosen["log_loss"], rel=1e-4)
    assert report["ingredients"] == chosen["members"]


def test_tune_refuses_a_soup_that_beats_no_member(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "indep.keras"
    result = invoke("tune", *trained["independent"], "--mode", "soup", "--data",
                    trained["held"], "-o", out)
    assert result.exit_code == 4
    assert "no soup beats the best member" in result.stderr
    assert "out of fold rows" in result.stderr and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--mode", "soup", "--to-probabilities"], "--to-probabilities does not apply"),
    (["--mode", "soup", "--inputs", "separate"], "--inputs separate does not apply"),
    (["--recompute-bn", "--data", "{held}"], "--recompute-bn applies to --mode soup only"),
    (["--mode", "soup", "--data", "{held}"], "--data is read by --recompute-bn only"),
    (["--mode", "soup", "--recompute-bn"], "--recompute-bn needs --data"),
])
def test_options_a_soup_does_not_take_are_exit_2(
    trained: dict[str, Any], tmp_path: Path, args: list[str], message: str
) -> None:
    args = [a.format(held=trained["held"]) for a in args]
    result = invoke("merge", *trained["runs"][:2], *args, "-o", tmp_path / "x.keras")
    assert result.exit_code == 2 and message in result.stderr


def test_a_wrong_variable_is_exit_6_and_out_is_untouched(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "soup.keras"
    out.write_bytes(b"old")
    original = soup.assign

    def off_by_one_ulp(model: keras.Model, arrays: list[np.ndarray]) -> None:
        arrays = list(arrays)
        arrays[0] = np.nextafter(arrays[0], np.float32(np.inf))
        original(model, arrays)

    monkeypatch.setattr(soup, "assign", off_by_one_ulp)
    result = invoke("merge", *trained["runs"], "--mode", "soup", "-o", out, "--force")
    assert result.exit_code == 6
    assert "differs from the members' weighted average" in result.stderr
    assert out.read_bytes() == b"old"


def test_verify_and_inspect_read_a_soup(trained: dict[str, Any], tmp_path: Path) -> None:
    runs = trained["runs"]
    out = tmp_path / "soup.keras"
    assert invoke("merge", *runs, "--mode", "soup", "-o", out).exit_code == 0
    result = invoke("verify", out, *runs, "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["mode"] == "soup" and report["soup"] is False
    assert invoke("verify", out).exit_code == 2  # a soup is checked against its members
    swapped = invoke("verify", out, runs[1], runs[0], runs[2])
    assert swapped.exit_code == 6 and "SHA-256" in swapped.stderr
    shown = invoke("inspect", out)
    assert shown.exit_code == 0
    assert "ensemble:   soup" in shown.stdout and "statistics averaged" in shown.stdout
    pair = invoke("inspect", *runs[:2], "--json")
    assert validated(pair.stdout)["compatibility"]["soup"] is True


def test_a_soup_exports_with_parity(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "soup.keras"
    result = invoke("merge", *trained["runs"][:2], "--mode", "soup", "-o", out,
                    "--export", "saved_model", "--json")
    assert result.exit_code == 0, result.stderr
    exports = validated(result.stdout)["exports"]
    assert exports[0]["verified"] and exports[0]["max_abs_error"] < 1e-5
