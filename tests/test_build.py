"""`fuse build RECIPE.toml`: recipes for merge, tune (an .npz file and an image folder)
and soup; byte-identical builds; `--check` and its reasons; pins; the lock."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import load, predict, validated
from test_images import make_folder
from typer.testing import CliRunner

from fuse_cli import formats
from fuse_cli.cli import app
from fuse_cli.formats import sha256_of


def invoke(*args: Any, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


def members_toml(*paths: Path, pins: bool = False) -> str:
    text = ""
    for path in paths:
        text += f'\n[[members]]\npath = "{path.name}"\n'
        if pins:
            text += f'sha256 = "{sha256_of(path)}"\n'
    return text


@pytest.fixture
def folder(zoo: dict[str, Path], tmp_path: Path) -> Path:
    """A recipe folder holding copies of two members and a small .npz data file."""
    for name in ("a.keras", "b.keras", "c.h5"):
        shutil.copy(zoo[name], tmp_path / name)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", x=rng.random((60, 5), dtype=np.float32),
             y=rng.integers(0, 10, 60))
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_merge_recipe_builds_the_same_bytes_twice_and_loads_in_plain_keras(
    folder: Path
) -> None:
    recipe = write(folder, "ens.toml", 'output = "out/ens.keras"\nweights = [1, 3]\n'
                   + members_toml(folder / "a.keras", folder / "c.h5", pins=True))
    (folder / "out").mkdir()
    first = invoke("build", recipe, "--json")
    assert first.exit_code == 0, first.stderr
    report = validated(first.stdout)
    assert report["action"] == "built" and report["result"]["formula"] == (
        "0.25 * a.keras + 0.75 * c.h5")
    out = folder / "out" / "ens.keras"
    bytes_first = out.read_bytes()
    again = invoke("build", recipe, "--force")
    assert again.exit_code == 0, again.stderr
    assert out.read_bytes() == bytes_first  # reproducible, bit for bit
    # plain Keras loads it and it computes the recipe's formula (numpy, members' own)
    x = np.random.default_rng(1).random((5, 5), dtype=np.float32)
    want = 0.25 * predict(load(folder / "a.keras"), x)[0] + 0.75 * predict(
        load(folder / "c.h5"), x)[0]
    np.testing.assert_allclose(predict(load(out), x)[0], want, rtol=1e-5, atol=1e-6)
    with zipfile.ZipFile(out) as zf:
        record = json.loads(zf.read("fuse.json"))
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert record["build"]["recipe"] == "ens.toml"
    assert record["build"]["recipe_sha256"] == sha256_of(recipe)


def test_source_date_epoch_sets_the_recorded_time(zoo: dict[str, Path], tmp_path: Path) -> None:
    outs = []
    for i, epoch in enumerate(("1700000000", "1700000000", "1800000000")):
        out = tmp_path / f"e{i}.keras"
        result = invoke("merge", zoo["a.keras"], zoo["b.keras"], "-o", out,
                        env={"SOURCE_DATE_EPOCH": epoch})
        assert result.exit_code == 0, result.stderr
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert outs[0].read_bytes() != outs[2].read_bytes()
    with zipfile.ZipFile(outs[0]) as zf:
        metadata = json.loads(zf.read("metadata.json"))
        assert metadata["date_saved"] == "2023-11-14@22:13:20"
        assert zf.infolist()[0].date_time == (2023, 11, 14, 22, 13, 20)
    bad = invoke("merge", zoo["a.keras"], zoo["b.keras"], "-o", tmp_path / "x.keras",
                 env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert bad.exit_code == 2 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_check_passes_on_a_fresh_build_and_names_what_changed(folder: Path) -> None:
    text = 'output = "ens.keras"\n' + members_toml(folder / "a.keras", folder / "b.keras")
    recipe = write(folder, "ens.toml", text)
    missing = invoke("build", recipe, "--check")
    assert missing.exit_code == 7 and "does not exist" in missing.stderr
    assert invoke("build", recipe).exit_code == 0
    fresh = invoke("build", recipe, "--check", "--json")
    assert fresh.exit_code == 0, fresh.stderr
    assert validated(fresh.stdout)["action"] == "up to date"
    out = folder / "ens.keras"
    built = out.read_bytes()
    # OUT edited after the build
    out.write_bytes(built + b"\0")
    edited = invoke("build", recipe, "--check")
    assert edited.exit_code == 7 and "ens.toml builds now" in edited.stderr
    out.write_bytes(built)
    # the recipe changed
    write(folder, "ens.toml", text + "\n# a comment changes the recipe's bytes\n")
    changed = invoke("build", recipe, "--check")
    assert changed.exit_code == 7 and "ens.toml changed since it was built" in changed.stderr
    write(folder, "ens.toml", text)
    assert invoke("build", recipe, "--check").exit_code == 0
    # a member changed
    shutil.copy(folder / "c.h5", folder / "b.keras.h5")
    (folder / "b.keras").write_bytes((folder / "a.keras").read_bytes())
    member = invoke("build", recipe, "--check")
    assert member.exit_code == 7 and "b.keras changed since" in member.stderr


def test_a_pin_refuses_a_changed_member_before_anything_loads(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write(folder, "ens.toml", 'output = "ens.keras"\n'
                   + members_toml(folder / "a.keras", folder / "b.keras", pins=True))
    (folder / "b.keras").write_bytes((folder / "a.keras").read_bytes())
    loads = []
    original = formats.load_model
    monkeypatch.setattr(formats, "load_model",
                        lambda *a, **k: loads.append(a) or original(*a, **k))
    result = invoke("build", recipe)
    assert result.exit_code == 3
    assert "is not the one" in result.stderr and "pins for member 2" in result.stderr
    assert loads == [] and not (folder / "ens.keras").exists()


@pytest.mark.parametrize("text, message", [
    ('output = "o.keras"\nmdoe = "sum"\n', "ens.toml:2: unknown key 'mdoe'"),
    ('output = "o.keras"\nweights = "0.3,0.7"\n', "ens.toml:2: weights must be an array"),
    ('output = "o.keras"\nmode = "median"\n', "ens.toml:2: mode: one of sum, product, soup"),
    ('output = "o.keras"\nweight = 1.5\n', "ens.toml:2: weight must be between 0 and 1"),
    ('output = "o.keras"\n[tune]\ndata = "val.npz"\ncv = 1\n', "ens.toml:4: cv must be 0"),
    ('output = "o.keras"\n[tune]\ndata = "val.npz"\nfolds = 3\n',
     "ens.toml:4: unknown key 'folds' in [tune]"),
    ('output = "o.keras"\n[tune]\ndata = "val.npz"\nengine = "spark"\n',
     "ens.toml:4: engine: one of local, ray"),
    ('output = "o.keras"\n[tune]\ndata = "val.npz"\nworkers = 2\n',
     "ens.toml:4: workers applies to"),
    ('output = "o.keras"\n[[members]]\npath = "a.keras"\nsha = "x"\n',
     "ens.toml:4: unknown key 'sha'"),
    ('output = "o.keras"\n[[members]]\npath = "a.keras"\nsha256 = "abc"\n',
     "ens.toml:4: sha256: 64 lowercase hex digits"),
    ('output = "o.keras\n', "not a TOML recipe"),
])
def test_a_bad_recipe_is_exit_2_naming_the_key_and_line(
    folder: Path, text: str, message: str
) -> None:
    # the members follow (a [[members]] header ends any table above it)
    more = [folder / "b.keras"] if "[[members]]" in text else [folder / "a.keras",
                                                                 folder / "b.keras"]
    text += members_toml(*more)
    recipe = write(folder, "ens.toml", text)
    result = invoke("build", recipe)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


def test_a_tune_recipe_on_an_npz_locks_and_rebuilds_the_same_bytes(folder: Path) -> None:
    recipe = write(folder, "tuned.toml", 'output = "tuned.keras"\n\n'
                   + members_toml(folder / "a.keras", folder / "b.keras", folder / "c.h5")
                   + '\n[tune]\ndata = "val.npz"\ncv = 3\nmetric = "accuracy"\n')
    lock = folder / "tuned.lock"
    result = invoke("build", recipe, "--lock", lock, "--json")
    assert result.exit_code == 0, result.stderr
    report = validated(result.stdout)
    assert report["kind"] == "tune" and report["result"]["metric"] == "accuracy"
    out = folder / "tuned.keras"
    tuned = out.read_bytes()
    assert invoke("build", recipe, "--check").exit_code == 0
    locked = invoke("build", recipe, "--lock", lock, "--locked", "--force")
    assert locked.exit_code == 0, locked.stderr
    assert out.read_bytes() == tuned  # no data pass, no search: the same file
    (folder / "a.keras").write_bytes((folder / "b.keras").read_bytes())
    stale = invoke("build", recipe, "--lock", lock, "--locked", "--force")
    assert stale.exit_code == 7 and "a.keras changed since" in stale.stderr


def test_an_image_folder_tune_recipe_and_a_soup_recipe_build_and_check(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    from test_images import cnn

    make_folder(tmp_path / "photos", per_class=4)
    for seed in (1, 2):
        cnn((12, 12, 3), seed).save(tmp_path / f"m{seed}.keras")
    members = members_toml(tmp_path / "m1.keras", tmp_path / "m2.keras")
    images = write(tmp_path, "images.toml", 'output = "images.keras"\n' + members
                   + '\n[tune]\ndata = "photos"\nrescale = "1/255"\ncv = 2\n')
    result = invoke("build", images)
    assert result.exit_code == 0, result.stderr
    record = load_record(tmp_path / "images.keras")
    assert record["preprocessing"]["rescale"] == pytest.approx(1 / 255)
    assert invoke("build", images, "--check").exit_code == 0
    soup = write(tmp_path, "soup.toml", 'output = "soup.keras"\nmode = "soup"\n'
                 'exports = ["litert"]\n' + members)
    result = invoke("build", soup)
    assert result.exit_code == 0, result.stderr
    assert load_record(tmp_path / "soup.keras")["mode"] == "soup"
    checked = invoke("build", soup, "--check", "--json")
    assert checked.exit_code == 0, checked.stderr
    lines = validated(checked.stdout)["checked"]
    assert any("soup.tflite: the same bytes" in line for line in lines)


def load_record(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("fuse.json"))  # type: ignore[no-any-return]


def test_the_shipped_recipe_matches_its_schema_and_h5_builds_are_reproducible(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    import jsonschema

    from fuse_cli.recipe import tomllib
    from fuse_cli.schemas import recipe_schema_path

    schema = json.loads(recipe_schema_path().read_text())
    shipped = Path(__file__).resolve().parent.parent / "sample_models" / "ensemble.toml"
    jsonschema.Draft202012Validator(schema).validate(tomllib.loads(shipped.read_text()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"output": "o.keras", "members": [],
                                                          "mdoe": "sum"})
    outs = [tmp_path / "one.h5", tmp_path / "two.h5"]
    for out in outs:
        assert invoke("merge", zoo["a.keras"], zoo["b.keras"], "-o", out).exit_code == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_an_image_input_recipe_bakes_the_tunes_rescale(tmp_path: Path) -> None:
    from test_images import cnn

    make_folder(tmp_path / "photos", per_class=4)
    cnn((12, 12, 3), 1).save(tmp_path / "rgb.keras")
    cnn((10, 8, 1), 2).save(tmp_path / "gray.keras")
    recipe = write(tmp_path, "image.toml", 'output = "image.keras"\ninputs = "image"\n'
                   + members_toml(tmp_path / "rgb.keras", tmp_path / "gray.keras")
                   + '\n[tune]\ndata = "photos"\nrescale = "1/255"\ncv = 0\n')
    result = invoke("build", recipe, "--json")
    assert result.exit_code == 0, result.stderr
    fit = validated(result.stdout)["result"]["fit"]["ensemble"]
    scored = validated(invoke("evaluate", tmp_path / "image.keras", "--data",
                              tmp_path / "photos", "--json").stdout)["models"][0]
    assert scored["log_loss"] == pytest.approx(fit["log_loss"], rel=1e-5)
    model = load(tmp_path / "image.keras")
    assert any(layer.name.endswith("_rescale") for layer in model.layers)
