"""`fuse export` and `fuse merge --export`: SavedModel, LiteRT and ONNX artifacts.

Every format is round-tripped on an ensemble of two small CNNs and run in its own
runtime (tf.saved_model, the LiteRT interpreter, onnxruntime), without fuse's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from helpers import tiny_cnn
from typer.testing import CliRunner

from fuse_cli import runtimes
from fuse_cli.choices import ExportFormat
from fuse_cli.cli import app
from fuse_cli.merge import merge_files

FORMATS = {"saved_model": "ens_saved_model", "litert": "ens.tflite", "onnx": "ens.onnx"}
HAS_ONNX = all(find_spec(m) is not None for m in ("tf2onnx", "onnx", "onnxruntime"))


def needs_onnx() -> None:
    """The test extra installs the ONNX tools: without them an ONNX test fails, loudly,
    on every machine, rather than skipping where nobody reads the skips."""
    if not HAS_ONNX:
        pytest.fail("the ONNX tests need tf2onnx, onnx and onnxruntime: "
                    "pip install -e '.[test]' (or 'fuse-cli[onnx]')")


@pytest.fixture(scope="module")
def cnns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small CNNs on 8x8 RGB images (concrete shapes, as LiteRT likes) and their sum."""
    folder = tmp_path_factory.mktemp("cnns")
    paths = {}
    for name, seed in (("a", 21), ("b", 22)):
        paths[name] = folder / f"{name}.keras"
        tiny_cnn((8, 8, 3), name=name, seed=seed).save(paths[name])
    paths["ens"] = folder / "ens.keras"
    merge_files([paths["a"], paths["b"]], paths["ens"])
    return paths


@pytest.fixture(scope="module")
def exported(cnns: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each format exported once through the CLI: the JSON reports and the folder."""
    folder = tmp_path_factory.mktemp("artifacts")
    runner = CliRunner()
    reports: dict[str, Any] = {"folder": folder}
    for fmt, name in FORMATS.items():
        if fmt == "onnx" and not HAS_ONNX:
            continue
        result = runner.invoke(
            app,
            ["export", str(cnns["ens"]), "--format", fmt, "-o", str(folder / name), "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.stderr
        reports[fmt] = json.loads(result.stdout)
    return reports


def _run_in_own_runtime(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """What a serving stack does with the artifact; nothing of fuse is involved."""
    if fmt == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return serve(input=tf.constant(x))["output_0"].numpy()
    if fmt == "litert":
        from fuse_cli.runtimes import litert_interpreter

        found = litert_interpreter()
        assert found is not None
        runner = found[0](model_path=str(path)).get_signature_runner()
        return runner(input=x)["output_0"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_matches_keras_in_own_runtime(
    fmt: str, cnns: dict[str, Path], exported: dict[str, Any]
) -> None:
    if fmt == "onnx":
        needs_onnx()
    report = exported[fmt]
    (item,) = report["exports"]
    path = exported["folder"] / FORMATS[fmt]
    assert report["ok"] is True
    assert item["format"] == fmt and item["path"] == str(path)
    assert item["verified"] is True
    assert 0 <= item["max_abs_error"] <= 1e-5
    assert path.exists() and item["size"] > 0

    # A batch of another size and seed than fuse's own check batch.
    x = np.random.default_rng(99).random((3, 8, 8, 3), dtype=np.float32)
    merged = keras.saving.load_model(cnns["ens"], compile=False, safe_mode=True)
    expected = np.asarray(merged(x))
    np.testing.assert_allclose(_run_in_own_runtime(fmt, path, x), expected, rtol=0, atol=1e-5)


def test_artifacts_run_without_fuse_or_keras(exported: dict[str, Any]) -> None:
    """A fresh interpreter where importing fuse_cli or keras fails still serves them."""
    script = textwrap.dedent(
        """
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        sys.modules["fuse_cli"] = None
        sys.modules["keras"] = None
        import numpy as np
        import tensorflow as tf
        x = np.full((2, 8, 8, 3), 0.5, dtype=np.float32)
        serve = tf.saved_model.load("ens_saved_model").signatures["serving_default"]
        sums = [float(serve(input=tf.constant(x))["output_0"].numpy().sum())]
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            Interpreter = tf.lite.Interpreter
        runner = Interpreter(model_path="ens.tflite").get_signature_runner()
        sums.append(float(runner(input=x)["output_0"].sum()))
        if os.path.exists("ens.onnx"):
            import onnxruntime as ort
            session = ort.InferenceSession("ens.onnx", providers=["CPUExecutionProvider"])
            sums.append(float(session.run(None, {"input": x})[0].sum()))
        print(sums)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=exported["folder"], capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sums = json.loads(result.stdout.strip().splitlines()[-1])
    # Two softmax rows per artifact: each sums to 1.
    np.testing.assert_allclose(sums, [2.0] * len(sums), atol=1e-5)


def test_merge_export_writes_checked_artifacts_beside_output(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    needs_onnx()
    out = tmp_path / "ens.keras"
    result = runner.invoke(
        app,
        ["merge", str(cnns["a"]), str(cnns["b"]), "-o", str(out),
         "--export", "onnx", "--export", "litert", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True
    assert [e["format"] for e in report["exports"]] == ["onnx", "litert"]
    assert [e["path"] for e in report["exports"]] == [
        str(tmp_path / "ens.onnx"), str(tmp_path / "ens.tflite")
    ]
    assert all(e["verified"] and e["max_abs_error"] <= 1e-5 for e in report["exports"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.keras", "ens.onnx", "ens.tflite"]


def test_merge_export_checks_artifact_paths_before_loading(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    (tmp_path / "ens.tflite").write_bytes(b"old")
    result = runner.invoke(
        app, ["merge", str(cnns["a"]), str(cnns["b"]), "-o", str(tmp_path / "ens.keras"),
              "--export", "litert"],
    )
    assert result.exit_code == 5
    assert "ens.tflite: already exists; pass --force" in result.stderr
    assert not (tmp_path / "ens.keras").exists()


def test_force_replaces_a_saved_model_folder(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "serving"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"old")
    (out / "stale.txt").write_text("old")
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "--format", "saved_model", "-o", str(out), "--force"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "parity:   matches the Keras model" in result.stdout
    assert not (out / "stale.txt").exists()
    assert (out / "saved_model.pb").stat().st_size > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving"]


def test_litert_falls_back_to_tf_lite_interpreter(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(tmp_path / "e.tflite"),
              "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    (item,) = json.loads(result.stdout)["exports"]
    assert item["runtime"].startswith("tf.lite")
    assert item["max_abs_error"] <= 1e-5


def test_no_verify_skips_the_parity_check(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(tmp_path / "e.tflite"),
              "--no-verify", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    (item,) = json.loads(result.stdout)["exports"]
    assert item["verified"] is False and item["max_abs_error"] is None
    assert (tmp_path / "e.tflite").stat().st_size > 0


# --- one test per exit code ---


def test_onnx_without_the_extra_exits_2(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("tf2onnx", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "e.onnx"
    result = runner.invoke(app, ["export", str(cnns["ens"]), "-f", "onnx", "-o", str(out)])
    assert result.exit_code == 2
    assert "needs tf2onnx, onnx, onnxruntime" in result.stderr
    assert "pip install 'fuse-cli[onnx]'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_extension_that_does_not_fit_the_format_exits_2(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(tmp_path / "e.onnx")]
    )
    assert result.exit_code == 2
    assert "--format litert writes a .tflite file; got '.onnx'" in result.stderr


def test_missing_model_exits_3(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["export", str(tmp_path / "nope.keras"), "-f", "litert",
              "-o", str(tmp_path / "e.tflite")]
    )
    assert result.exit_code == 3
    assert "nope.keras: no such file" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_without_force_exits_5(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    out = tmp_path / "e.tflite"
    out.write_bytes(b"old")
    result = runner.invoke(app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(out)])
    assert result.exit_code == 5
    assert "e.tflite: already exists; pass --force to replace it" in result.stderr
    assert out.read_bytes() == b"old"


def test_force_never_replaces_a_folder_that_is_not_a_saved_model(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "saved_model", "-o", str(tmp_path), "--force"]
    )
    assert result.exit_code == 5
    assert "holds no SavedModel" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_failed_conversion_exits_5_and_leaves_nothing(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("op Foo is not supported")

    monkeypatch.setattr(keras.Model, "export", refuse)
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(tmp_path / "e.tflite")]
    )
    assert result.exit_code == 5
    assert "cannot convert the model to litert: NotImplementedError: op Foo" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_exits_6_and_keeps_the_old_artifact(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runner = runtimes.RUNNERS[ExportFormat.LITERT]

    def drifting() -> Any:
        run, runtime = make_runner()
        return (lambda *args: [y + 1e-3 for y in run(*args)]), runtime

    monkeypatch.setitem(runtimes.RUNNERS, ExportFormat.LITERT, drifting)
    out = tmp_path / "e.tflite"
    out.write_bytes(b"old")
    result = runner.invoke(
        app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(out), "--force"]
    )
    assert result.exit_code == 6
    assert "e.tflite (litert, run by" in result.stderr
    assert "differs from the Keras model by up to 0.001" in result.stderr
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.tflite"]


def test_artifact_its_runtime_cannot_run_exits_6(
    cnns: dict[str, Path], tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Any:
        def run(*args: Any) -> Any:
            raise RuntimeError("Encountered unresolved custom op: FlexFoo.\nmore detail")

        return run, "test runtime"

    monkeypatch.setitem(runtimes.RUNNERS, ExportFormat.LITERT, broken)
    out = tmp_path / "e.tflite"
    result = runner.invoke(app, ["export", str(cnns["ens"]), "-f", "litert", "-o", str(out)])
    assert result.exit_code == 6
    assert "test runtime cannot run the litert artifact: RuntimeError: Encountered " \
           "unresolved custom op: FlexFoo." in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_help_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "from fuse_cli.cli import main\n"
        "sys.argv = ['fuse', 'export', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'tensorflow', 'keras', 'h5py', 'tf2onnx', 'onnxruntime', 'ai_edge_litert'}\n"
        "print('HEAVY:', sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "saved_model" in result.stdout and "litert" in result.stdout
    assert result.stdout.rstrip().endswith("HEAVY: []")
