"""Run fuse's loader on a local copy of the public legacy `.h5` corpus; print the tally.

A developer tool, not a CI test: the files are third-party and never committed. The
list of files is `files.tsv` beside this script (repository, path, git blob SHA-1,
the `keras_version` attribute, whether the file carries code, its kind). `python_code`
is `yes` for a Lambda (marshalled Python bytecode), `tf_ops` for TFOpLambda /
SlicingOpLambda layers (TensorFlow functions called by name, which Keras 3 cannot
build), `no` otherwise. Bring
the files into a folder of your own, under any names (they are matched by blob SHA-1),
then, with the project's venv and a tf-keras venv of its own:

    python3 -m venv /work/venvs/tfkeras
    /work/venvs/tfkeras/bin/pip install tf-keras==2.21.0 tensorflow==2.21.0 h5py
    .venv/bin/python scripts/legacy_corpus/run_corpus.py /work/corpus/legacy \\
        --tf-keras-python /work/venvs/tfkeras/bin/python

For each file without code, tf-keras (in a subprocess) loads it and predicts on a
fixed random input (seeded by the blob SHA; integers below the smallest Embedding
`input_dim` when the model has one); fuse's loader then loads it in safe mode and
predicts on the same input. Outputs match when |fuse - tf_keras| <= 1e-5 * max(1,
|tf_keras|). Files with code (`yes`, `tf_ops`) are never given to tf-keras, which would
run it: fuse must refuse them with exit 3. The tally counts loads+matches, refusals (with
their exit code), mismatches and errors (anything that is not a `FuseError`), and
whether each outcome is the expected one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5
SEED = 20241129

# Run by the tf-keras interpreter: argv = [json list of [key, path]], out folder.
REFERENCE_SCRIPT = r"""
import json, os, sys, traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tf_keras

def leaves(model):
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            yield from leaves(layer)
        else:
            yield layer

def inputs_for(model, seed):
    rng = np.random.default_rng(seed)
    vocab = [l.input_dim for l in leaves(model) if type(l).__name__ == "Embedding"]
    xs = []
    for tensor in model.inputs:
        shape = [d for d in tensor.shape]
        shape = [2 if i == 0 and d is None else (7 if d is None else int(d))
                 for i, d in enumerate(shape)]
        if vocab:
            xs.append(rng.integers(0, min(vocab), size=shape).astype("float32"))
        else:
            xs.append(rng.random(shape, dtype=np.float32))
    return xs

jobs = json.loads(sys.argv[1])
out = sys.argv[2]
for key, path, seed in jobs:
    record = {"key": key}
    try:
        tf_keras.backend.clear_session()
        model = tf_keras.models.load_model(path, compile=False)
        xs = inputs_for(model, seed)
        ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        ys = ys if isinstance(ys, list) else [ys]
        np.savez(os.path.join(out, key + ".npz"),
                 **{f"x{i}": x for i, x in enumerate(xs)},
                 **{f"y{i}": y for i, y in enumerate(ys)})
        record["ok"] = True
    except Exception as exc:
        record["ok"] = False
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        record["error"] = f"{type(exc).__name__}: {text}"
    print(json.dumps(record), flush=True)
"""


@dataclass(frozen=True)
class Entry:
    repository: str
    path: str
    blob: str
    keras_version: str
    python_code: str  # "no", "yes" (Lambda) or "tf_ops" (TFOpLambda)
    kind: str

    @property
    def has_code(self) -> bool:
        return self.python_code != "no"


def read_list(path: Path) -> list[Entry]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    entries = []
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t"), strict=True))
        entries.append(
            Entry(
                row["repository"],
                row["path"],
                row["blob"],
                row["keras_version"],
                row["python_code"],
                row["kind"],
            )
        )
    return entries


def blob_sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def index_folder(folder: Path) -> dict[str, Path]:
    return {blob_sha(p): p for p in sorted(folder.rglob("*")) if p.is_file()}


def references(python: str, jobs: list[tuple[str, Path]], out: Path) -> dict[str, dict[str, Any]]:
    """Run tf-keras on every job in one subprocess; the records it printed, by key."""
    payload = json.dumps([[key, str(path), int(key[:8], 16)] for key, path in jobs])
    result = subprocess.run(
        [python, "-c", REFERENCE_SCRIPT, payload, str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    records = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["key"]] = record
    if result.returncode != 0 and not records:
        sys.exit(f"tf-keras reference run failed:\n{result.stderr[-2000:]}")
    return records


def load_with_fuse(path: Path) -> Any:
    try:  # the layout after the loading refactor
        from fuse_cli.formats import load_model
    except ImportError:
        from fuse_cli.model_io import load_model
    return load_model(path, unsafe=False)


def compare(model: Any, data: Any) -> tuple[bool, float]:
    import numpy as np

    xs = [data[k] for k in sorted(k for k in data.files if k.startswith("x"))]
    ys = [data[k] for k in sorted(k for k in data.files if k.startswith("y"))]
    got = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    got = got if isinstance(got, list | tuple) else [got]
    if len(got) != len(ys):
        return False, float("inf")
    worst = 0.0
    for g, y in zip(got, ys, strict=True):
        g = np.asarray(g, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if g.shape != y.shape:
            return False, float("inf")
        excess = np.abs(g - y) / np.maximum(1.0, np.abs(y))
        worst = max(worst, float(excess.max()) if excess.size else 0.0)
    return worst <= TOLERANCE, worst


def run_fuse(entry: Entry, path: Path, data: Any) -> dict[str, Any]:
    from fuse_cli.errors import FuseError

    try:
        loaded = load_with_fuse(path)
    except FuseError as exc:
        return {"outcome": "refused", "exit": exc.exit_code, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a developer tool reports everything
        return {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:300]}
    migrations = list(getattr(loaded, "migrations", []))
    if data is None:
        return {"outcome": "loaded (no reference)", "migrations": migrations}
    try:
        ok, worst = compare(loaded.model, data)
    except Exception as exc:  # noqa: BLE001
        return {"outcome": "error", "message": f"predict: {type(exc).__name__}: {exc}"[:300]}
    return {
        "outcome": "match" if ok else "mismatch",
        "max_rel_err": worst,
        "migrations": migrations,
    }


def expected(entry: Entry, result: dict[str, Any]) -> bool:
    if entry.has_code:
        return result["outcome"] == "refused" and result.get("exit") == 3
    return result["outcome"] == "match"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="local copies of the listed files")
    parser.add_argument("--list", type=Path, default=HERE / "files.tsv")
    parser.add_argument("--tf-keras-python", default="/work/venvs/tfkeras/bin/python")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--only", help="only files whose repository or path contains this")
    args = parser.parse_args()

    entries = read_list(args.list)
    if args.only:
        entries = [e for e in entries if args.only in e.repository or args.only in e.path]
    local = index_folder(args.folder)
    missing = [e for e in entries if e.blob not in local]
    for e in missing:
        print(f"MISSING  {e.repository}/{e.path} (blob {e.blob})")
    entries = [e for e in entries if e.blob in local]

    import numpy as np

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(e.blob, local[e.blob]) for e in entries if not e.has_code]
        start = time.monotonic()
        refs = references(args.tf_keras_python, jobs, Path(tmp))
        print(f"tf-keras references: {len(refs)} files in {time.monotonic() - start:.0f} s")
        for e in entries:
            ref = refs.get(e.blob)
            data = None
            if ref and ref.get("ok"):
                data = np.load(Path(tmp) / f"{e.blob}.npz")
            result = run_fuse(e, local[e.blob], data)
            if not e.has_code and not (ref and ref.get("ok")):
                result["tf_keras"] = ref.get("error") if ref else "no reference"
            result.update(
                repository=e.repository,
                path=e.path,
                blob=e.blob,
                keras_version=e.keras_version,
                python_code=e.python_code,
                kind=e.kind,
                expected=expected(e, result),
            )
            results.append(result)
            detail = result.get("message") or (
                f"max rel err {result['max_rel_err']:.1e}" if "max_rel_err" in result else ""
            )
            rules = ",".join(result.get("migrations") or [])
            mark = "ok " if result["expected"] else "BAD"
            print(
                f"{mark} {result['outcome']:<9} {e.keras_version:<9} "
                f"{'code ' if e.has_code else ''}{e.repository}/{e.path}"
                f"{'  [' + rules + ']' if rules else ''}  {detail}"[:400]
            )

    tally = Counter()
    for r in results:
        key = r["outcome"] if r["outcome"] != "refused" else f"refused (exit {r['exit']})"
        tally[key] += 1
    print("\nTally:", ", ".join(f"{k}: {v}" for k, v in sorted(tally.items())))
    plain = [r for r in results if r["python_code"] == "no"]
    code = [r for r in results if r["python_code"] != "no"]
    print(
        f"Without code: {sum(r['expected'] for r in plain)}/{len(plain)} load and match "
        f"tf-keras; with code (Lambda or TF ops): {sum(r['expected'] for r in code)}/"
        f"{len(code)} refused with exit 3."
    )
    tm = [r for r in results if r["kind"] == "teachable_machine"]
    print(f"Teachable Machine exports: {sum(r['expected'] for r in tm)}/{len(tm)} as expected.")
    versions = sorted({r["keras_version"] for r in results}, key=_version_key)
    print("Writer versions:", ", ".join(versions))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
