"""Direct tests of pieces that only end-to-end tests reached: the product layer's
renormalization and the ends of the weight grid. Expected values are numpy or literals.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fuse_cli.choices import Mode
from fuse_cli.layers import WeightedProduct
from fuse_cli.search import Ensembler, grid_search, search_weights

# --- renormalization ------------------------------------------------------------------


def product(coefficients: list[float], inputs: list[np.ndarray], renormalize: bool) -> np.ndarray:
    layer = WeightedProduct(coefficients, renormalize=renormalize)
    return keras.ops.convert_to_numpy(layer([x.astype(np.float32) for x in inputs]))


def test_renormalize_divides_each_row_by_its_own_sum() -> None:
    """Rows of different sums over a last axis longer than the batch, against numpy."""
    rng = np.random.default_rng(3)
    a = rng.random((3, 2, 5)) + 0.01
    b = rng.random((3, 2, 5)) + 0.01
    raw = a**0.3 * b**0.7
    expected = raw / raw.sum(axis=-1, keepdims=True)

    found = product([0.3, 0.7], [a, b], renormalize=True)

    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(found.sum(axis=-1), np.ones((3, 2)), rtol=1e-5)
    # Without it, the weighted geometric mean is left as it is: rows do not sum to 1.
    np.testing.assert_allclose(product([0.3, 0.7], [a, b], renormalize=False), raw, rtol=1e-5)
    assert not np.allclose(raw.sum(axis=-1), 1.0, atol=1e-3)


def test_renormalize_by_hand_on_literals() -> None:
    """(0.5 * 0.5)^.5 = 0.5, (0.5 * 0.125)^.5 = 0.25 and 0: renormalized, 2/3, 1/3, 0."""
    a = np.array([[0.5, 0.5, 0.0]])
    b = np.array([[0.5, 0.125, 1.0]])
    np.testing.assert_allclose(product([0.5, 0.5], [a, b], renormalize=True),
                               [[2 / 3, 1 / 3, 0.0]], rtol=1e-6)


def test_renormalize_keeps_a_row_where_every_class_underflowed_finite() -> None:
    """Every class 0: the row stays 0 (not NaN), and the other rows are untouched."""
    a = np.array([[0.0, 0.0], [0.25, 0.75]])
    b = np.array([[0.0, 0.0], [0.25, 0.75]])
    found = product([0.5, 0.5], [a, b], renormalize=True)
    np.testing.assert_array_equal(np.isfinite(found), True)
    np.testing.assert_allclose(found, [[0.0, 0.0], [0.25, 0.75]], rtol=1e-6)


# --- the ends of the weight grid ---------------------------------------------------------


def good_and_useless(rows: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A member right on every row (confidently), and a constant, uniform one.

    Every bit of weight given to the uniform member adds log-loss, so the exact best
    weight for the good member is 1.0: the very end of the grid.
    """
    rng = np.random.default_rng(11)
    y = rng.integers(0, 4, rows)
    good = np.full((rows, 4), 0.02, np.float32)
    good[np.arange(rows), y] = 0.94
    uniform = np.full((rows, 4), 0.25, np.float32)
    return good, uniform, y


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.PRODUCT])
def test_grid_chooses_weight_one_when_one_member_is_all_that_helps(mode: Mode) -> None:
    good, uniform, y = good_and_useless()
    found = grid_search(Ensembler([good, uniform], y, mode), "log_loss")
    assert found.weights == [1.0, 0.0]
    assert found.path[found.chosen] == [1.0, 0.0]


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.PRODUCT])
def test_grid_chooses_weight_zero_when_the_first_member_is_useless(mode: Mode) -> None:
    good, uniform, y = good_and_useless()
    found = search_weights(Ensembler([uniform, good], y, mode), "log_loss")
    assert found.method == "grid"
    assert found.weights == [0.0, 1.0]


def test_grid_ends_are_scored_like_the_members_alone() -> None:
    """At weight 1.0 the ensemble is the first member: its score is that member's own,
    computed with numpy (row / row sum, clipped, -log)."""
    good, uniform, y = good_and_useless()
    found = grid_search(Ensembler([good, uniform], y, Mode.SUM), "log_loss")
    end = found.scores[found.path.index([1.0, 0.0])]
    assert end.accuracy == 1.0
    assert end.log_loss == pytest.approx(-np.log(0.94 / 1.0), rel=1e-5)
    start = found.scores[found.path.index([0.0, 1.0])]
    assert start.log_loss == pytest.approx(-np.log(0.25), rel=1e-5)
