"""What people read: distinct member names, messages without framework internals or raw
Python warnings, advice that fits the mistake."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import provenance_of, validated
from typer.testing import CliRunner

from fuse_cli.choices import Mode
from fuse_cli.cli import app
from fuse_cli.search import Ensembler


def test_a_file_given_twice_gets_distinct_short_names(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    a, b = str(zoo["a.keras"]), str(zoo["b.keras"])
    result = runner.invoke(app, ["merge", a, b, a, "-o", str(out), "--json"],
                           catch_exceptions=False)
    report = validated(result.stdout)
    assert [m["file"] for m in report["members"]] == ["a.keras#1", "b.keras", "a.keras#3"]
    assert report["formula"] == "0.333333 * a.keras#1 + 0.333333 * b.keras + " \
                                "0.333333 * a.keras#3"
    # the record names the files themselves
    assert [m["file"] for m in provenance_of(out)["members"]] == ["a.keras", "b.keras",
                                                                  "a.keras"]


def test_a_corrupt_image_is_named_without_tensorflow_internals(tmp_path: Path) -> None:
    from fuse_cli.image_pass import decode_error

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    reason = decode_error(str(bad))
    assert reason and "{{function_node" not in reason and "[Op:" not in reason
    assert "job:localhost" not in reason


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.PRODUCT])
def test_the_search_warns_nothing_at_its_edges(mode: Mode) -> None:
    """Outputs of exactly 0 (log of 0 in product mode) and rows that sum to 0: numpy
    would print RuntimeWarnings with their source lines; the search clips them."""
    outputs = [np.array([[0.0, 1.0], [0.0, 0.0], [1e30, 0.0]], dtype=np.float32),
               np.array([[1.0, 0.0], [0.0, 0.0], [3e38, 3e38]], dtype=np.float32)]
    ensembler = Ensembler(outputs, np.array([1, 0, 0]), mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accuracy, _ = ensembler.scores([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert accuracy.shape == (3,)


def test_predictions_in_another_order_say_to_reorder(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    from fuse_cli.formats import sha256_of
    from fuse_cli.predictions import Predictions, save_predictions

    files = [zoo["a.keras"], zoo["b.keras"]]
    saved = tmp_path / "p.npz"
    p = np.full((6, 10), 0.1, dtype=np.float32)
    save_predictions(Predictions(path=saved, y=np.arange(6) % 10, outputs=[p, p],
                                 files=[f.name for f in files],
                                 sha256=[sha256_of(f) for f in files]), saved)
    result = runner.invoke(app, ["tune", str(files[1]), str(files[0]), "--predictions",
                                 str(saved), "-o", str(tmp_path / "t.keras")])
    assert result.exit_code == 2
    assert "the file holds these models in another order (a.keras, b.keras): give the " \
           "models in the order they were saved" in result.stderr


def test_an_npz_given_as_a_model_is_named_as_data(runner: CliRunner, zoo: dict[str, Path],
                                                   tmp_path: Path) -> None:
    data = tmp_path / "rows.npz"
    np.savez(data, x=np.zeros((3, 5), np.float32), y=np.zeros(3, np.int64))
    result = runner.invoke(app, ["merge", str(data), str(zoo["a.keras"]), "-o",
                                 str(tmp_path / "e.keras")])
    assert result.exit_code == 3
    assert "holds the array 'x.npy': an .npz data file (numpy.savez), not a .keras model" \
        in result.stderr


def test_sharing_a_layer_without_weights_claims_no_saving(runner: CliRunner,
                                                          tmp_path: Path) -> None:
    import keras

    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Rescaling(0.5),
                                  keras.layers.Dense(3, activation="softmax")])
        paths.append(tmp_path / f"m{seed}.keras")
        model.save(paths[-1])
    result = runner.invoke(app, ["merge", *map(str, paths), "-o", str(tmp_path / "e.keras")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "computed once for m1.keras, m2.keras" in " ".join(result.stdout.split())
    assert "saves 0 params" not in result.stdout


def test_the_fold_table_shows_every_weight_of_three_members(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "val.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((60, 5), dtype=np.float32), y=rng.integers(0, 10, 60))
    files = [zoo["a.keras"], zoo["b.keras"], zoo["c.h5"]]
    result = runner.invoke(app, ["tune", *map(str, files), "--data", str(data), "--cv", "3",
                                 "-o", str(tmp_path / "t.keras"), "--json"],
                           catch_exceptions=False)
    folds = validated(result.stdout)["cv"]["folds"]
    text = runner.invoke(app, ["tune", *map(str, files), "--data", str(data), "--cv", "3",
                               "-o", str(tmp_path / "t.keras"), "--force"],
                         catch_exceptions=False).stdout
    assert "weights (a.keras," in text  # the column names every member, in order
    row = next(line for line in text.splitlines() if line.startswith("│ 1 "))
    cells = row + next(line for line in text.splitlines()[text.splitlines().index(row) + 1:])
    for weight in folds[0]["weights"]:  # fold 1's row (folded over two lines at 80 columns)
        assert f"{weight:.4g}" in cells


def test_elapsed_is_the_whole_command_and_its_parts_add_up(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ens.keras"
    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                                 str(out), "--export", "saved_model", "--json"],
                           catch_exceptions=False)
    report = validated(result.stdout)
    assert list(report["parts"]) == ["load and check", "build", "write and verify", "export"]
    assert all(seconds >= 0 for seconds in report["parts"].values())
    # the parts happen within the command: their sum is at most the whole
    assert sum(report["parts"].values()) <= report["elapsed_seconds"]
    text = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o",
                               str(out), "--force"], catch_exceptions=False).stdout
    assert "(load and check " in text and ", write and verify " in text


@pytest.mark.parametrize("command", ["merge", "export", "inspect", "verify", "evaluate", "tune",
                                     "build"])
def test_help_shows_no_bool_for_a_flag(command: str, runner: CliRunner) -> None:
    """A flag takes no value: the help shows none (typer would print `<bool>`)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "--force" in result.stdout or "--json" in result.stdout
    assert "<bool>" not in result.stdout


@pytest.mark.parametrize("command, usage", [
    ("merge", "Usage: fuse merge [OPTIONS] MODELS..."),
    ("tune", "Usage: fuse tune [OPTIONS] MODELS..."),
    ("verify", "Usage: fuse verify [OPTIONS] MERGED [MEMBERS]..."),
    ("inspect", "Usage: fuse inspect [OPTIONS] MODELS..."),
    ("build", "Usage: fuse build [OPTIONS] RECIPE.toml"),
])
def test_the_usage_line_reads_as_arguments_are_written(
    command: str, usage: str, runner: CliRunner
) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert usage in result.stdout and "{" not in result.stdout.splitlines()[1]


def test_merge_and_tune_group_their_options_in_panels(runner: CliRunner) -> None:
    merge = runner.invoke(app, ["merge", "--help"], env={"COLUMNS": "80"}).stdout
    tune = runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "80"}).stdout
    for panel in ("Combining outputs", "Soup", "Safety and reports"):
        assert f"╭─ {panel} " in merge and f"╭─ {panel} " in tune
    assert "╭─ Search and calibration " in tune and "╭─ Images " in tune
    soup = merge[merge.index("╭─ Soup "):]
    assert "--recompute-bn" in soup.split("╰")[0] and "--batch-size" in soup.split("╰")[0]


def test_json_shapes_come_as_arrays_too(runner: CliRunner, zoo: dict[str, Path],
                                        tmp_path: Path) -> None:
    import json

    result = runner.invoke(app, ["merge", str(zoo["a.keras"]), str(zoo["wide7.keras"]), "-o",
                                 str(tmp_path / "x.keras"), "--json"], catch_exceptions=False)
    members = json.loads(result.stdout)["members"]
    assert members[0]["input_shapes"] == ["(None, 5)"]  # the text stays (fuse/1)
    assert [m["input_dims"] for m in members] == [[[None, 5]], [[None, 7]]]
    assert members[0]["output_dims"] == [[None, 10]]


def test_progress_lines_for_a_ci_log_only_when_asked(
    runner: CliRunner, zoo: dict[str, Path], tmp_path: Path
) -> None:
    import re

    args = ["merge", str(zoo["a.keras"]), str(zoo["b.keras"]), "-o", str(tmp_path / "x.keras")]
    quiet = runner.invoke(app, args, catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.stderr == ""  # not a terminal: nothing by default
    logged = runner.invoke(app, [*args, "--force"], env={"FUSE_PROGRESS": "lines"},
                           catch_exceptions=False)
    lines = logged.stderr.strip().splitlines()
    assert logged.exit_code == 0 and len(lines) >= 3
    assert all(re.match(r"^\d\d:\d\d:\d\d \S", line) for line in lines), lines
    assert any("loading" in line for line in lines) and any("verifying" in line
                                                              for line in lines)


def test_a_terminal_sees_a_line_while_tensorflow_imports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from fuse_cli import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    progress.say_at_once("importing TensorFlow…")
    progress.said_at_once()
    assert capsys.readouterr().err == "importing TensorFlow…\r\x1b[K"


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux's script")
def test_a_real_80_column_terminal_gets_lines_of_80_at_most(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """A real run on a pseudo-terminal 80 columns wide (one subprocess)."""
    import os
    import re
    import subprocess
    import sys

    fuse = Path(sys.executable).parent / "fuse"
    command = (f"stty cols 80; {fuse} merge {zoo['a.keras']} {zoo['linear.keras']} "
               f"-o {tmp_path / 'x.keras'}")  # exit 4: the long error message
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stdout).replace("\r", "\n")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert done.returncode == 4 and any("mixed output kinds" in line for line in lines)
    assert max(len(line.rstrip()) for line in lines) <= 80, lines


def test_bars_at_80_columns_shorten_the_label_never_the_numbers() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from fuse_cli.progress import bar_columns

    console = Console(width=80, force_terminal=True, record=True)
    bars = Progress(*bar_columns(), console=console, auto_refresh=False)
    task = bars.add_task("predicting with a_rather_long_member_file_name_v2.keras#1",
                         total=14376, count="14,376/14,376 rows", rate="1,234 rows/s")
    bars.update(task, completed=14376)
    console.print(bars.make_tasks_table(bars.tasks))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "rows" in line)
    assert "14,376/14,376 rows" in line and "1,234 rows/s" in line
    assert len(line.rstrip()) <= 80 and "…" in line
