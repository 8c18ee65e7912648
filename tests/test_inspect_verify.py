"""`fuse inspect` and `fuse verify`: what a file is, and whether a merged file holds up."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import pytest
from helpers import validated
from typer.testing import CliRunner

from fuse_cli import __version__
from fuse_cli.cli import app
from fuse_cli.ensemble import build_ensemble
from fuse_cli.formats import save_model, sha256_of
from fuse_cli.merge import MergeOptions, merge_files


@pytest.fixture(scope="module")
def merged(zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.keras and c.h5, weights 3 and 1 (0.75 and 0.25)."""
    out = tmp_path_factory.mktemp("merged") / "ens.keras"
    merge_files([zoo["a.keras"], zoo["c.h5"]], out, MergeOptions(weights=[3, 1]))
    return out


def _forged(zoo: dict[str, Path], out: Path, sources: list[str], **changes: Any) -> Path:
    """A merged file that embeds `sources` but records a.keras and c.h5 (or `changes`)."""
    models = [keras.saving.load_model(zoo[s], compile=False) for s in sources]
    provenance = {
        "tool": f"fuse {__version__}", "mode": "sum", "weights_given": [1.0, 1.0],
        "weights": [0.5, 0.5], "renormalize": False, "inputs": "shared",
        "members": [
            {"file": name, "name": "sequential", "sha256": sha256_of(zoo[name]), "migrations": []}
            for name in ("a.keras", "c.h5")
        ],
    }
    provenance.update(changes)
    save_model(build_ensemble(models, [0.5, 0.5]), out, provenance=provenance)
    return out


def _invoke(runner: CliRunner, *args: Any, ok: bool = True) -> Any:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=not ok)


# --- inspect ---


def test_inspect_json_of_a_merged_file_has_mode_weights_and_provenance(
    merged: Path, zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "inspect", merged, "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    (info,) = report["models"]
    assert report["compatibility"] is None
    assert info["format"] == "keras" and info["keras_version"] == keras.__version__
    assert info["inputs"] == [{"name": "input", "shape": [None, 5], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "combine", "shape": [None, 10], "dtype": "float32"}]
    assert info["size"] == merged.stat().st_size
    assert info["sha256"] == sha256_of(merged)
    assert info["params"] > 0

    ensemble = info["ensemble"]
    assert ensemble["mode"] == "sum"
    assert ensemble["weights_given"] == [3.0, 1.0]
    assert ensemble["weights"] == [0.75, 0.25]
    assert ensemble["inputs"] == "shared"
    assert ensemble["tool"] == f"fuse {__version__}"
    members = ensemble["members"]
    assert [m["file"] for m in members] == ["a.keras", "c.h5"]
    assert [m["sha256"] for m in members] == [sha256_of(zoo["a.keras"]), sha256_of(zoo["c.h5"])]
    assert [m["last_activations"] for m in members] == [["softmax"], ["softmax"]]


def test_inspect_json_of_a_plain_legacy_file(zoo: dict[str, Path], runner: CliRunner) -> None:
    result = _invoke(runner, "inspect", zoo["c.h5"], "--json")
    assert result.exit_code == 0, result.stderr
    (info,) = validated(result.stdout)["models"]
    assert info["format"] == "h5"
    assert info["name"] == "c"
    assert info["last_activations"] == ["softmax"]
    assert info["outputs"][0]["shape"] == [None, 10]
    assert info["ensemble"] is None


def test_inspect_two_incompatible_files_names_the_mismatch(
    zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "inspect", zoo["a.keras"], zoo["classes5.keras"], "--json")
    assert result.exit_code == 0, result.stderr
    compatibility = validated(result.stdout)["compatibility"]
    assert compatibility["mergeable"] is False
    assert compatibility["reason"] == (
        "classes5.keras: output shape (None, 5) does not match a.keras: (None, 10)"
    )


@pytest.mark.parametrize(
    ("files", "inputs", "product"),
    [
        (["a.keras", "b.keras"], "shared", True),
        (["a.keras", "wide7.keras"], "separate", True),
        (["linear.keras", "linear.keras"], "shared", False),
    ],
)
def test_inspect_says_how_files_would_merge(
    files: list[str], inputs: str, product: bool, zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "inspect", *(zoo[f] for f in files), "--json")
    assert result.exit_code == 0, result.stderr
    compatibility = validated(result.stdout)["compatibility"]
    assert compatibility["mergeable"] is True and compatibility["reason"] is None
    assert compatibility["inputs"] == inputs
    assert compatibility["outputs"] == ["(None, 10)"]
    assert compatibility["product"] is product
    if not product:
        assert "linear.keras#1: product mode needs outputs >= 0" in compatibility["product_reason"]


def test_inspect_prints_a_readable_report(
    merged: Path, zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "inspect", merged, zoo["classes5.keras"])
    assert result.exit_code == 0, result.stderr
    assert "ensemble:   sum, shared inputs, weights 3, 1 → 0.75, 0.25" in result.stdout
    assert "member 1: c.h5 → member_1_c" in result.stdout
    assert "can merge: no: classes5.keras: output shape (None, 5)" in result.stdout


def test_inspect_missing_file_exits_3(tmp_path: Path, runner: CliRunner) -> None:
    result = _invoke(runner, "inspect", tmp_path / "nope.keras", ok=False)
    assert result.exit_code == 3
    assert "nope.keras: no such file" in result.stderr


# --- verify ---


def test_verify_rechecks_the_formula_and_the_member_files(
    merged: Path, zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "verify", merged)
    assert result.exit_code == 0, result.stderr
    assert "computes its sum formula on its 2 embedded members" in result.stdout

    result = _invoke(runner, "verify", merged, zoo["a.keras"], zoo["c.h5"], "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["mode"] == "sum" and report["provenance_recorded"] is True
    assert report["formula_max_abs_error"] <= 1e-6
    assert [m["given"] for m in report["members"]] == [str(zoo["a.keras"]), str(zoo["c.h5"])]
    assert [m["max_abs_error"] for m in report["members"]] == [0.0, 0.0]


def test_verify_member_swapped_for_another_file_exits_6(
    merged: Path, zoo: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    swapped = tmp_path / "c.h5"
    shutil.copyfile(zoo["b.keras"], swapped)  # same name, other model
    result = _invoke(runner, "verify", merged, zoo["a.keras"], swapped, ok=False)
    assert result.exit_code == 6
    assert f"{swapped}: SHA-256 {sha256_of(swapped)[:12]}… is not the one" in result.stderr
    assert f"for member 1 (c.h5: {sha256_of(zoo['c.h5'])[:12]}…)" in result.stderr


def test_verify_members_in_the_wrong_order_exits_6(
    merged: Path, zoo: dict[str, Path], runner: CliRunner
) -> None:
    result = _invoke(runner, "verify", merged, zoo["c.h5"], zoo["a.keras"], ok=False)
    assert result.exit_code == 6
    assert "it is member 1: give the member files in the order they were merged" in result.stderr


def test_verify_embedded_member_that_differs_from_its_file_exits_6(
    zoo: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    forged = _forged(zoo, tmp_path / "forged.keras", ["a.keras", "b.keras"])
    assert _invoke(runner, "verify", forged).exit_code == 0  # consistent on its own
    result = _invoke(runner, "verify", forged, zoo["a.keras"], zoo["c.h5"], ok=False)
    assert result.exit_code == 6
    assert "embedded member 1 (member_1_sequential): differs from" in result.stderr
    assert "c.h5 by up to" in result.stderr


def test_verify_provenance_that_disagrees_with_the_layers_exits_6(
    zoo: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    forged = _forged(zoo, tmp_path / "forged.keras", ["a.keras", "c.h5"], weights=[0.9, 0.1])
    result = _invoke(runner, "verify", forged, ok=False)
    assert result.exit_code == 6
    assert "the provenance records weights [0.9, 0.1], but the combining layer computes with " \
           "[0.5, 0.5]" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["a.keras"], "has 2 members; got 1 member file"),
        (None, "not a merged model (no fuse combining layer)"),
    ],
)
def test_verify_usage_errors_exit_2(
    extra: list[str] | None, message: str, merged: Path, zoo: dict[str, Path],
    runner: CliRunner,
) -> None:
    args = [merged, *(zoo[f] for f in extra)] if extra else [zoo["a.keras"]]
    result = _invoke(runner, "verify", *args, ok=False)
    assert result.exit_code == 2
    assert message in result.stderr


def test_verify_missing_member_file_exits_3(
    merged: Path, zoo: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    result = _invoke(runner, "verify", merged, zoo["a.keras"], tmp_path / "gone.h5", ok=False)
    assert result.exit_code == 3
    assert "gone.h5: no such file" in result.stderr
