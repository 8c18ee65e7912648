"""`--recompute-bn`: a soup's BatchNormalization statistics estimated again from data.

The data is what `fuse evaluate` reads (an .npz file, or a folder of images with the
same options), streamed in batches; its labels are not used. See
`fuse_cli.soup.recompute_batchnorm` for the estimate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fuse_cli.compatibility import input_specs
from fuse_cli.data import Dataset, check_inputs
from fuse_cli.errors import UsageError
from fuse_cli.evaluation import BATCH_SIZE, IMAGE_BATCH_SIZE, Data, read_any
from fuse_cli.formula import prediction_batch
from fuse_cli.image_pass import image_batches
from fuse_cli.images import ImageFolder, ImageOptions, image_inputs
from fuse_cli.report import Advance, Progress
from fuse_cli.soup import recompute_batchnorm
from fuse_cli.tables import ImageTable

if TYPE_CHECKING:
    import keras

    from fuse_cli.planning import MergeOptions, MergePlan
    from fuse_cli.soup_tuning import SoupTuneReport
    from fuse_cli.tuning import TuneOptions


def recompute_on_data(
    model: keras.Model,
    label: str,
    options: MergeOptions,
    data: Data | None = None,
    say: Progress | None = None,
) -> dict[str, Any]:
    """Re-estimate `model`'s BatchNormalization statistics on `options.recompute_bn`.

    Args:
        model: The soup (changed in place).
        label: How to name the model in messages.
        options: The merge options: the data, its image options and batch size.
        data: The data already read (tune), else it is read here.
        say: Progress.

    Returns:
        What the provenance records: the data, its rows, the layers re-estimated.

    Raises:
        DataError, DataLoadError: The data cannot be read or does not fit the model.
    """
    assert options.recompute_bn is not None
    path = Path(options.recompute_bn)
    data = data if data is not None else read_any(path, options.images)
    say = say or (lambda _message: None)
    say(f"re-estimating BatchNormalization statistics on {data.name}")
    found = recompute_batchnorm(model, input_batches(model, data, label, options), _rows)
    record: dict[str, Any] = {"data": data.name + ("/" if isinstance(data, ImageFolder) else ""),
                              **found}
    if isinstance(data, Dataset):
        from fuse_cli.formats import sha256_of

        record["sha256"] = sha256_of(data.path)
    return record


def input_batches(
    model: keras.Model, data: Data, label: str, options: MergeOptions
) -> Iterator[Any]:
    """The data's inputs in batches, as the model takes them (labels unused)."""
    specs = input_specs(model)
    if isinstance(data, ImageTable):
        raise UsageError(f"--recompute-bn reads an .npz file or a folder of images; "
                         f"{data.name} is Parquet")
    if isinstance(data, ImageFolder):
        sizes = image_inputs(specs, label)
        batch = prediction_batch(model, options.batch_size or IMAGE_BATCH_SIZE, label)
        rows = np.array([r for r in range(data.rows) if r not in data.bad], dtype=np.int64)
        images = options.images or ImageOptions()
        for found, _positions in image_batches(data, rows, sizes, images, batch):
            yield list(found) if isinstance(found, tuple) else found
        return
    check_inputs(data, specs, label)
    batch = prediction_batch(model, options.batch_size or BATCH_SIZE, label)
    for start in range(0, data.rows, batch):
        arrays = [x[start:start + batch] for x in data.inputs]
        yield arrays if len(arrays) > 1 else arrays[0]


def _rows(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list) else batch
    return int(first.shape[0])


def tune_soup(
    plan: MergePlan,
    data: Data,
    member_outputs: tuple[list[np.ndarray], np.ndarray, np.ndarray],
    options: TuneOptions,
    say: Progress,
    advance: Advance | None,
    start: float,
    parts: dict[str, float],
    preprocessing: dict[str, Any] | None,
) -> SoupTuneReport:
    """`fuse tune --mode soup` once the members have run: predict the soups it needs,
    compare (`fuse_cli.soup_tuning`), and write the better soup if it beats the best
    member (else exit 4, unless `options.even_if_worse`).

    Raises:
        IncompatibleModelsError: No soup beats the best member.
    """
    import time

    from fuse_cli import soup
    from fuse_cli.evaluation import model_outputs, restrict
    from fuse_cli.merge import execute
    from fuse_cli.methods.soup import NO_DATA_WARNING
    from fuse_cli.soup_tuning import (
        SoupTuneReport,
        beats_best_member,
        compare_soups,
        raise_refusal,
        tuning_of,
    )

    outputs, y, rows = member_outputs
    merge, labels = plan.options, plan.labels
    work = soup.rebuild(plan.models[0], "soup")
    members = [soup.values(m) for m in plan.models]
    floats = [soup.is_float(v) for v in soup.variables(work)]
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def predict(ingredients: tuple[int, ...]) -> np.ndarray:
        if ingredients not in cache:
            weights = [1.0 / len(ingredients) if i in ingredients else 0.0
                       for i in range(len(members))]
            soup.assign(work, soup.soup_values(members, floats, weights))
            if merge.recompute_bn is not None:
                recompute_on_data(work, labels[0], merge, data=data, say=say)
            name = f"soup of {len(ingredients)}"
            say(f"predicting with the {name} ({', '.join(labels[i] for i in ingredients)})")
            run = model_outputs(work, data, label=name, batch_size=options.batch_size,
                                images=options.images, advance=advance)
            cache[ingredients] = restrict(run, rows)[0]
        return cache[ingredients]

    clock = time.perf_counter()
    entries, scored_on, scored, ingredients, chosen, notes = compare_soups(
        outputs, y, predict, labels, metric=options.metric.value,
        holdout=options.holdout, cv=options.cv)
    parts["soups"] = time.perf_counter() - clock
    report = SoupTuneReport(
        data=data.name, rows=len(y), metric=options.metric.value, scored_on=scored_on,
        scored_rows=scored, folds=options.cv if scored_on == "out of fold" else 0,
        entries=entries, chosen=chosen, ingredients=[labels[i] for i in ingredients],
        written=False, merge=None, elapsed_seconds=0.0, warnings=notes,
        batchnorm="recomputed" if merge.recompute_bn is not None else "averaged",
    )
    if not beats_best_member(entries, chosen, options.metric.value):
        if not options.even_if_worse:
            raise_refusal(entries, options.metric.value, scored_on, scored)
        report.warnings.append(f"soup: the {chosen} does not beat the best member; written "
                               "as --even-if-worse asks")
    record = tuning_of(entries, chosen, options.metric.value, scored_on, scored,
                       {"file": data.name, "rows": len(y)}, options.holdout, options.cv)
    weights = [1.0 if i in ingredients else 0.0 for i in range(len(members))]
    chosen_plan = replace(plan, warnings=tuple(w for w in plan.warnings if w != NO_DATA_WARNING))
    report.merge = execute(chosen_plan.with_weights(weights, record, preprocessing), progress=say,
                           start=start, parts=parts)
    report.written = True
    report.warnings += report.merge.warnings
    report.elapsed_seconds = time.perf_counter() - start
    return report
