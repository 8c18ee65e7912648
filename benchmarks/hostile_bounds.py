"""Measure what each hostile file of issues 13 and 21 costs `fuse`: exit code, peak memory, time.

    python benchmarks/hostile_bounds.py [--out DIR] [--only NAME ...] [--rss-limit-mib N]
                                        [--timeout S] [--json RESULT.json]

Builds the full-size corpus of `tests/hostile2.py` and `tests/hostile3.py` (round 3,
cases `r3_*`) in a scratch folder, then runs the
installed `fuse` on each case in its own process, with its own TMPDIR. The parent
polls the child's resident memory (/proc) and its temp folder, and kills it past
`--rss-limit-mib` (default 3072: the machine is shared) or `--timeout` seconds, so a
bomb never takes the machine down; a killed run is reported as "killed at". Peak
memory is the child's own high-water mark (VmHWM, polled every 20 ms). The exit code,
the last stderr line, and whether the case's damage happened (payload ran, input
replaced, raw control characters printed) are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Result:
    name: str
    command: str
    exit_code: int | None
    peak_rss_mib: float
    peak_tmp_mib: float
    seconds: float
    killed: str | None
    damage: str | None
    stderr: str


def fuse_binary() -> str:
    here = Path(sys.executable).parent / "fuse"
    return str(here) if here.exists() else "fuse"


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_mib(folder: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total / 1024**2


def run_case(
    name: str, argv: list[str], cwd: Path, rss_limit: float, timeout: float, shell: bool = False
) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp_{name}_", dir=cwd.parent))
    env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        " ".join(argv) if shell else argv, cwd=cwd, env=env, shell=shell,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    peak_tmp = 0.0
    peak = 0.0
    killed = None
    status = None
    usage = None
    polls = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        polls += 1
        rss = rss_mib(proc.pid)
        # VmHWM: the high-water mark of this process image (ru_maxrss would include the
        # parent's memory at fork time, before exec)
        peak = max(peak, rss_mib(proc.pid, "VmHWM"))
        if polls % 5 == 0:
            peak_tmp = max(peak_tmp, tree_mib(tmp))
        elapsed = time.perf_counter() - start
        if rss > rss_limit or elapsed > timeout:
            killed = f"RSS {rss:.0f} MiB" if rss > rss_limit else f"{elapsed:.0f} s"
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else None
    stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    stdout = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
    proc.stdout and proc.stdout.close()
    proc.stderr and proc.stderr.close()
    shutil.rmtree(tmp, ignore_errors=True)
    del usage
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return Result(
        name=name, command=" ".join(str(a) for a in argv), exit_code=None if killed else
        proc.returncode, peak_rss_mib=round(peak, 1), peak_tmp_mib=round(peak_tmp, 1),
        seconds=round(seconds, 2), killed=killed,
        damage="raw control characters sent to the terminal" if "\x1b" in stdout else None,
        stderr=(lines[-1] if lines else "")[:300],
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_cases(
    folder: Path, wanted: Callable[[str], bool]
) -> list[tuple[str, list[str], Path, Callable[[], str | None]]]:
    """Every wanted case: name, argv, working folder, and a check returning the damage seen."""
    import hostile2 as h
    from conftest import dense_classifier

    fuse = fuse_binary()
    nothing: Callable[[], str | None] = lambda: None  # noqa: E731
    good = h.good_keras(folder, "good.keras")
    cases: list[tuple[str, list[str], Path, Callable[[], str | None]]] = []

    def inspect(name: str, build: Callable[[Path], Path]) -> None:
        if wanted(name):
            cases.append((name, [fuse, "inspect", str(build(folder))], folder, nothing))

    def merge(name: str, build: Callable[[Path], Path]) -> None:
        if wanted(name):
            out, path = folder / f"out_{name}.keras", build(folder)
            cases.append((name, [fuse, "merge", str(path), str(path), "-o", str(out),
                                 "--force"], folder, nothing))

    if wanted("0_baseline_inspect_good"):
        cases.append(("0_baseline_inspect_good", [fuse, "inspect", str(good)], folder, nothing))
    merge("0_baseline_merge_good", lambda f: good)
    inspect("1_ladder_h5", h.ladder_h5)
    inspect("1_ladder_keras", h.ladder_keras)
    inspect("1_cycle_h5", h.cycle_h5)
    inspect("2_wide_dense_keras", h.wide_dense_keras)
    inspect("2_ghost_dataset_h5", h.ghost_dataset_h5)
    inspect("2_npz_bools_keras", h.npz_bools_keras)
    merge("2_long_input_2^27", h.long_input_keras)
    merge("2_upsampling_2GiB_a_sample", h.upsampling_keras)
    inspect("2_padded_config_57MB", h.padded_config_keras)
    inspect("2_zero_assets_6x250MiB", h.zero_assets_keras)
    inspect("3_deep_config_100k", h.deep_config_keras)
    inspect("3_deep_layer_config_900", h.deep_layer_config_keras)
    merge("3_huge_input_1e12", h.huge_input_keras)
    merge("3_string_input", h.string_input_keras)
    if wanted("3_lying_npz_1e12"):
        cases.append(("3_lying_npz_1e12", [fuse, "evaluate", str(good), "--data",
                                          str(h.lying_npz(folder))], folder, nothing))
    cases.extend(c for c in provenance_cases(folder, fuse, good) if wanted(c[0]))
    cases.extend(c for c in overwrite_cases(folder, fuse, dense_classifier) if wanted(c[0]))
    if wanted("6_option_injection"):
        cases.append(injection_case(folder, fuse))
    cases.extend(c for c in round3_cases(folder, fuse, good) if wanted(c[0]))
    return cases


def round3_cases(folder: Path, fuse: str, good: Path) -> list:
    """Issue "hostile inputs, round 3": one case per class, at full size (`tests/hostile3.py`)."""
    import hostile3 as h3
    import numpy as np

    nothing: Callable[[], str | None] = lambda: None  # noqa: E731
    cases: list = []

    def scratch(name: str) -> Path:
        path = folder / name
        path.mkdir(exist_ok=True)
        return path

    def merge_self(name: str, path: Path) -> tuple:
        return (name, [fuse, "merge", str(path), str(path), "-o", str(folder / f"out_{name}.keras"),
                       "--force"], folder, nothing)

    def images(name: str, fill: Callable[[Path], object], *extra: str) -> tuple:
        work = scratch(name)
        model = h3_image_classifier(work)
        root = work / "images"
        for c in ("cat", "dog"):
            for i in range(3):
                h3_small_png(root / c / f"{i}.png", i + (10 if c == "dog" else 0))
        fill(root)
        return (name, [fuse, "evaluate", str(model), "--data", str(root), *extra], work, nothing)

    cases.append(("r3_1_vds_h5", [fuse, "inspect", str(h3.vds_h5(scratch("vds")))], folder,
                  nothing))
    cases.append(("r3_1_vds_keras", [fuse, "inspect", str(h3.vds_keras(scratch("vdsk")))],
                  folder, nothing))
    cases.append(("r3_2_numpy_dtype_3.6GB", [fuse, "inspect",
                  str(h3.numpy_argument_keras(scratch("numpy")))], folder, nothing))
    cases.append(("r3_2_reversed_config_10k", [fuse, "inspect",
                  str(h3.reversed_chain_keras(scratch("reversed"), length=10_000))], folder,
                  nothing))
    cases.append(merge_self("r3_2_attention_4096", h3.attention_keras(scratch("attention"))))
    cases.append(merge_self("r3_2_one_layer_800_calls",
                            h3.repeated_layer_keras(scratch("repeated"))))
    upsampling = h3.upsampling_classifier_keras(scratch("upsampling"))
    data = folder / "upsampling" / "rows.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((256, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 3, 256))
    cases.append(("r3_3_evaluate_upsampling_256_rows", [fuse, "evaluate", str(upsampling),
                  "--data", str(data)], folder, nothing))
    cases.append(images("r3_4_png_bomb_30000", lambda r: h3.png_bomb(r / "cat", side=30_000)))
    cases.append(images("r3_4_webp_header_named_png",
                        lambda r: h3.webp_bomb_named_png(r / "cat")))
    cases.append(images("r3_5_fifo_skip_bad", lambda r: os.mkfifo(r / "cat" / "fifo.png"),
                        "--skip-bad-images"))
    cases.append(images("r3_5_dev_zero_link",
                        lambda r: os.symlink("/dev/zero", r / "dog" / "zero.png")))
    cases.append(images("r3_5_class_link_to_usr", lambda r: os.symlink("/usr", r / "system")))
    cases.append(("r3_6_npz_without_suffix_1e12", [fuse, "evaluate", str(good), "--data",
                  str(h3.npz_without_suffix(scratch("nosuffix")))], folder, nothing))
    other = h3.functional_keras(scratch("other"))
    cases.append(("r3_8_name_too_long", [fuse, "merge", str(good), str(other), "-o",
                  str(folder / ("e" * 250 + ".keras"))], folder, nothing))
    cases.append(("r3_8_weights_overflow", [fuse, "merge", str(good), str(good), "-o",
                  str(folder / "w.keras"), "--weights", "1e308,1e308"], folder, nothing))
    cases.append(images("r3_9_offset_nan", lambda r: None, "--offset", "nan"))
    return cases


def h3_image_classifier(folder: Path) -> Path:
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    path = folder / "tiny.keras"
    model.save(path)
    return path


def h3_small_png(path: Path, seed: int) -> None:
    import numpy as np
    import tensorflow as tf

    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def provenance_cases(folder: Path, fuse: str, good: Path) -> list:
    import hostile2 as h

    other = h.good_keras(folder, "other.keras")
    merged = folder / "merged.keras"
    subprocess.run([fuse, "merge", str(good), str(other), "-o", str(merged), "--force"],
                   check=True, capture_output=True)
    bad = h.edit_provenance(merged, folder / "bad_provenance.keras",
                            weights_given=["1", "x"], members=5)
    markup = h.markup_version_keras(folder)
    control = h.markup_version_keras(folder, "3.15\x1b]0;owned\x07\x1b[2J",
                                     "control_version.keras")

    def raw_escape() -> str | None:
        return None

    return [
        ("4_provenance_types_inspect", [fuse, "inspect", str(bad)], folder, raw_escape),
        ("4_provenance_types_verify", [fuse, "verify", str(bad)], folder, raw_escape),
        ("4_markup_keras_version", [fuse, "inspect", str(markup)], folder, raw_escape),
        ("4_control_chars_version", [fuse, "inspect", str(control)], folder, raw_escape),
    ]


def overwrite_cases(folder: Path, fuse: str, dense_classifier: Callable) -> list:
    """The overwrite cases, each in its own copy of one working folder."""
    import numpy as np

    template = folder / "overwrite"
    template.mkdir(exist_ok=True)
    dense_classifier(5, seed=41, name="a").save(template / "b.keras")
    for seed, name in ((42, "ens.tflite"), (43, "a.png")):  # models, by content
        dense_classifier(5, seed=seed, name=f"m{seed}").save(template / "tmp.keras")
        (template / "tmp.keras").rename(template / name)
    with open(template / "data.keras", "wb") as f:  # np.savez would append .npz to a name
        np.savez(f, x=np.random.default_rng(0).random((40, 5), dtype=np.float32),
                 y=np.arange(40) % 10)
    commands = {
        "5_export_over_input": ["merge", "ens.tflite", "b.keras", "-o", "ens.keras",
                                "--export", "litert", "--force"],
        "5_tune_over_data_and_model": ["tune", "a.png", "b.keras", "--data", "data.keras",
                                       "-o", "data.keras", "--plot", "a.png", "--force"],
        "5_output_via_symlink": ["merge", "a.png", "b.keras", "-o", "link.keras", "--force"],
        "5_plot_via_hard_link": ["tune", "a.png", "b.keras", "--data", "data.keras", "-o",
                                 "t.keras", "--plot", "hard.png", "--force"],
    }
    cases = []
    for name, argv in commands.items():
        work = folder / name
        shutil.copytree(template, work, dirs_exist_ok=True)
        os.symlink("b.keras", work / "link.keras")
        os.link(work / "b.keras", work / "hard.png")
        before = {p.name: sha(p) for p in work.iterdir() if p.is_file() and not p.is_symlink()}
        cases.append((name, [fuse, *argv], work, _changed(work, before)))
    return cases


def _changed(work: Path, before: dict[str, str]) -> Callable[[], str | None]:
    def changed() -> str | None:
        now = {p.name: sha(p) for p in work.iterdir() if p.name in before}
        names = sorted(n for n in before if now.get(n) != before[n])
        return f"replaced inputs: {', '.join(names)}" if names else None

    return changed


def injection_case(folder: Path, fuse: str) -> tuple:
    import hostile

    work = folder / "injection"
    work.mkdir(exist_ok=True)
    marker = folder / "PWNED"
    hostile.good_keras(work, "a.keras")
    hostile.lambda_keras(work, marker)
    (work / "--unsafe").touch()

    def ran() -> str | None:
        return "the Lambda's code ran" if marker.exists() else None

    return ("6_option_injection", [fuse, "merge", "*", "-o", "../out_injection.keras"], work,
            ran)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--rss-limit-mib", type=float, default=3072)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="hostile_bounds_"))
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    results = []
    def wanted(name: str) -> bool:
        return not args.only or any(part in name for part in args.only)

    for name, argv, cwd, damage in build_cases(corpus, wanted):
        shell = "*" in argv
        result = run_case(name, argv, cwd, args.rss_limit_mib, args.timeout, shell=shell)
        result.damage = damage() or result.damage
        results.append(result)
        print(f"{name:32} exit {result.exit_code!s:4} peak {result.peak_rss_mib:7.0f} MiB "
              f"tmp {result.peak_tmp_mib:6.0f} MiB {result.seconds:6.1f} s"
              f"{' KILLED at ' + result.killed if result.killed else ''}"
              f"{' DAMAGE: ' + result.damage if result.damage else ''}\n    {result.stderr}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if not args.out:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
