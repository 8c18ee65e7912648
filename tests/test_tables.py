"""`--data T.parquet`: labelled images in Parquet, on the local engine.

The reference is the same images as a folder, which `test_images.py` checks against
Keras's own `image_dataset_from_directory`: a table holding the folder's encoded files
(and labels) must give the same predictions and scores, to the bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import validated
from hostile3 import png_bomb
from test_images import cnn, make_folder, run
from typer.testing import CliRunner

from fuse_cli.images import read_image_folder


def write_table(folder: Path, path: Path, *, struct: bool = False, groups: int = 5,
                extra: list[tuple[bytes, int]] = ()) -> Path:
    """The folder's image files and labels as one Parquet file (binary, or Hugging Face's
    struct layout), in the folder's row order, `extra` rows last."""
    listed = read_image_folder(folder)
    blobs = [Path(f).read_bytes() for f in listed.files] + [b for b, _ in extra]
    labels = listed.labels.tolist() + [label for _, label in extra]
    image = (pa.array([{"bytes": b, "path": "p"} for b in blobs]) if struct
             else pa.array(blobs, pa.binary()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": image, "label": pa.array(labels, pa.int64()),
                             "note": ["x"] * len(blobs)}), path, row_group_size=groups)
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tables")
    folder = make_folder(root / "photos", per_class=6, seed=3)
    paths = {"folder": folder, "one": write_table(folder, root / "one.parquet")}
    # A folder of parts, nested: the rows of parts in sorted path order.
    listed = read_image_folder(folder)
    half = len(listed.files) // 2
    for name, rows in (("a/part-0.parquet", slice(None, half)),
                       ("b/part-1.parquet", slice(half, None))):
        part = root / "parts" / name
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "image": pa.array([Path(f).read_bytes() for f in listed.files[rows]], pa.binary()),
            "label": pa.array(listed.labels[rows], pa.int32())}), part, row_group_size=4)
    paths["parts"] = root / "parts"
    paths["struct"] = write_table(folder, root / "struct.parquet", struct=True)
    bomb = png_bomb(root, side=10_000).read_bytes()
    paths["bomb"] = write_table(folder, root / "bomb.parquet", extra=[(bomb, 1)])
    paths["broken"] = write_table(folder, root / "broken.parquet",
                                  extra=[(b"\x89PNG\r\n\x1a\nnot really", 0)])
    for name, shape, seed in (("rgb", (12, 10, 3), 1), ("gray", (9, 9, 1), 2)):
        paths[name] = root / f"{name}.keras"
        cnn(shape, seed).save(paths[name])
    return paths


def evaluate(runner: CliRunner, data: Path, *models: Path, out: Path, extra=()) -> dict:
    result = run(runner, "evaluate", *models, "--data", data, "--save-predictions", out,
                 "--json", *extra, ok=True)
    return validated(result.stdout)


def same_predictions(a: Path, b: Path) -> None:
    with np.load(a) as one, np.load(b) as two:
        assert np.array_equal(one["y"], two["y"])
        for key in ("p0", "p1"):
            assert np.array_equal(one[key], two[key])


@pytest.mark.parametrize("kind", ["one", "parts", "struct"])
def test_a_table_gives_the_folders_predictions(tables, runner, tmp_path, kind) -> None:
    members = (tables["rgb"], tables["gray"])
    folder = evaluate(runner, tables["folder"], *members, out=tmp_path / "folder.npz")
    table = evaluate(runner, tables[kind], *members, out=tmp_path / "table.npz")
    same_predictions(tmp_path / "folder.npz", tmp_path / "table.npz")
    assert table["rows"] == folder["rows"] == 18
    assert [m["log_loss"] for m in table["models"]] == [m["log_loss"] for m in folder["models"]]


def test_an_image_that_declares_too_many_pixels_is_refused_or_skipped(tables, runner,
                                                                       tmp_path) -> None:
    members = (tables["rgb"], tables["gray"])
    refused = run(runner, "evaluate", *members, "--data", tables["bomb"])
    assert refused.exit_code == 3
    assert "bomb.parquet row 18" in refused.stderr and "megapixels" in refused.stderr
    report = evaluate(runner, tables["bomb"], *members, out=tmp_path / "skipped.npz",
                      extra=["--skip-bad-images"])
    assert report["rows"] == 18 and report["skipped"] == 1
    evaluate(runner, tables["folder"], *members, out=tmp_path / "folder.npz")
    same_predictions(tmp_path / "folder.npz", tmp_path / "skipped.npz")


def test_an_image_that_does_not_decode_names_its_row(tables, runner) -> None:
    result = run(runner, "evaluate", tables["rgb"], "--data", tables["broken"])
    assert result.exit_code == 3
    assert "broken.parquet row 18: cannot be read as an image" in result.stderr


def bad_table(path: Path, **columns: pa.Array) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_tables_that_are_not_image_tables_are_refused(tables, runner, tmp_path) -> None:
    png = next(Path(tables["folder"]).rglob("*.png")).read_bytes()
    cases = {
        "no label": (bad_table(tmp_path / "a.parquet", image=pa.array([png])), 2,
                     "no 'label' column"),
        "float labels": (bad_table(tmp_path / "b.parquet", image=pa.array([png]),
                                   label=pa.array([1.5])), 2, "expected integer"),
        "negative": (bad_table(tmp_path / "c.parquet", image=pa.array([png]),
                               label=pa.array([-1])), 2, "class indices >= 0"),
        "null label": (bad_table(tmp_path / "d.parquet", image=pa.array([png]),
                                 label=pa.array([None], pa.int64())), 2, "null"),
        "strings": (bad_table(tmp_path / "e.parquet", image=pa.array(["x"]),
                              label=pa.array([0])), 2, "expected binary"),
        "too many classes": (bad_table(tmp_path / "f.parquet", image=pa.array([png]),
                                       label=pa.array([3])), 4, "outputs 3 classes"),
    }
    not_parquet = tmp_path / "g.parquet"
    not_parquet.write_bytes(b"PK\x03\x04 a zip")
    cases["not parquet"] = (not_parquet, 3, "not a Parquet file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    bad_table(mixed / "0.parquet", image=pa.array([png]), label=pa.array([0], pa.int64()))
    bad_table(mixed / "1.parquet", image=pa.array([png]), label=pa.array([0], pa.int8()))
    cases["two schemas"] = (mixed, 2, "share one schema")
    # 40 million rows in a few KB (run-length encoded): their labels alone are 320 MB read.
    rows = 40_000_000
    cases["rows bomb"] = (bad_table(tmp_path / "h.parquet", image=pa.nulls(rows, pa.binary()),
                                    label=pa.array(np.zeros(rows, np.int8))), 3, "too large")
    for name, (path, code, words) in cases.items():
        result = run(runner, "evaluate", tables["rgb"], "--data", path)
        assert (result.exit_code, words in result.stderr) == (code, True), (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, name


def test_folder_only_options_are_refused_for_a_table(tables, runner) -> None:
    result = run(runner, "evaluate", tables["rgb"], "--data", tables["one"],
                 "--class-names", "cats,dogs")
    assert result.exit_code == 2 and "is Parquet" in result.stderr


def test_tune_on_a_table_records_it_and_matches_the_folder(tables, runner, tmp_path) -> None:
    members = (tables["rgb"], tables["gray"])
    found = {}
    for kind in ("folder", "one"):
        out = tmp_path / f"{kind}.keras"
        result = run(runner, "tune", *members, "--data", tables[kind], "-o", out, "--json",
                     ok=True)
        found[kind] = json.loads(result.stdout)
    assert found["one"]["weights"] == found["folder"]["weights"]
    assert found["one"]["fit"] == found["folder"]["fit"]
    assert found["one"]["source"] == "images"
