"""Time the merged model's `predict` against the members' `predict` calls added up.

Run by `run.py`; by hand:

    python benchmarks/predict_bench.py --merged ENS.keras --members A.keras B.h5 \
        [--batch 64] [--repeats 5] [--json OUT.json]

Every model is loaded as a user would (`keras.saving.load_model`, safe mode). The
first `predict` of each model traces its predict function and is reported apart as
the cold call; then `--repeats` rounds each time the merged model once and every
member once, alternating which goes first so drift hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed_predict(model, batch, cpu: list[float] | None = None) -> float:  # noqa: ANN001
    """Seconds taken by one `predict` over the whole batch in one step.

    The process's CPU seconds for the call are appended to `cpu`: unlike wall time,
    they barely move when another process takes one of the cores.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    model.predict(batch, batch_size=len(batch), verbose=0)
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", type=Path, required=True)
    parser.add_argument("--members", type=Path, nargs="+", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the timings here (default: stdout)")
    args = parser.parse_args()

    import keras
    import numpy as np

    import fuse_cli.layers  # noqa: F401  (registers the combining layers)

    merged = keras.saving.load_model(args.merged, compile=False)
    members = [keras.saving.load_model(path, compile=False) for path in args.members]
    shape = tuple(merged.inputs[0].shape[1:])
    batch = np.random.default_rng(0).random((args.batch, *shape), dtype=np.float32)

    cold_merged = timed_predict(merged, batch)
    cold_members = [timed_predict(member, batch) for member in members]
    merged_times: list[float] = []
    member_times: list[list[float]] = []
    merged_cpu: list[float] = []
    member_cpu: list[list[float]] = []

    def time_members() -> None:
        cpu: list[float] = []
        member_times.append([timed_predict(member, batch, cpu) for member in members])
        member_cpu.append(cpu)

    for round_index in range(args.repeats):
        if round_index % 2 == 0:
            merged_times.append(timed_predict(merged, batch, merged_cpu))
            time_members()
        else:
            time_members()
            merged_times.append(timed_predict(merged, batch, merged_cpu))

    result = {
        "batch": args.batch,
        "input_shape": list(shape),
        "cold_merged_s": cold_merged,
        "cold_members_s": cold_members,
        "merged_s": merged_times,
        "members_s": member_times,
        "merged_cpu_s": merged_cpu,
        "members_cpu_s": member_cpu,
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.json:
        args.json.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
