"""What a tune records about itself: the rows it ran on, how it chose the weights, and the
preprocessing of the images it fed the members (kept in the merged file's provenance)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fuse_cli.compatibility import input_specs
from fuse_cli.data import SPLIT_SEED, Dataset
from fuse_cli.formats import sha256_of
from fuse_cli.images import CHANNELS, ImageFolder, ImageOptions, image_input
from fuse_cli.provenance import tuning_record
from fuse_cli.tables import ImageTable

if TYPE_CHECKING:
    from fuse_cli.evaluation import Data
    from fuse_cli.planning import MergePlan
    from fuse_cli.predictions import Predictions
    from fuse_cli.selection import Search
    from fuse_cli.tuning import TuneOptions


def preprocessing_record(
    data: Data | None, plan: MergePlan, options: TuneOptions
) -> dict[str, Any] | None:
    """What was done to a folder's images before each member saw them (None for arrays):
    the provenance keeps it so whoever runs the file does the same."""
    if not isinstance(data, ImageFolder | ImageTable):
        return None
    images = options.images or ImageOptions()
    sizes = [image_input(input_specs(m.model), label)
             for m, label in zip(plan.members, plan.labels, strict=True)]
    record: dict[str, Any] = {
        "rescale": images.rescale,
        "offset": images.offset,
        "resize": images.resize,
        "members": [{"file": m.path.name, "height": h, "width": w,
                     "color_mode": CHANNELS[c]}
                    for m, (h, w, c) in zip(plan.members, sizes, strict=True)],
    }
    inputs = plan.combination.plan
    if inputs.image is not None:  # `--inputs image`: all of it is in the graph
        record["baked"] = True
        record["input"] = list(inputs.specs[0][0].shape)
    return record


def source_kind(saved: Predictions | None, data: Data | None) -> str:
    """`predictions`, `images` or `data` (an .npz file): what the rows came from."""
    if saved is not None:
        return "predictions"
    return "images" if isinstance(data, ImageFolder | ImageTable) else "data"


def describe_source(saved: Predictions | None, data: Data | None, rows: int) -> dict[str, Any]:
    """What the tuning ran on, for the provenance: the file and its SHA-256, or the folder."""
    if saved is not None and saved.path is not None:
        return {"file": saved.path.name, "sha256": sha256_of(saved.path), "rows": rows,
                "kind": "predictions"}
    if isinstance(data, ImageFolder):
        return {"file": data.name + "/", "rows": rows, "classes": len(data.classes),
                "skipped": len(data.bad), "kind": "images"}
    if isinstance(data, ImageTable):
        return {"file": data.name, "rows": rows, "parts": len(data.parts),
                "skipped": len(data.bad), "kind": "parquet"}
    assert isinstance(data, Dataset)
    return {"file": data.path.name, "sha256": sha256_of(data.path), "rows": rows, "kind": "npz"}


def tuning_of_search(data: dict[str, Any], search: Search, options: TuneOptions) -> dict[str, Any]:
    """What the merged file records about its tuning (beside `fuse merge`'s keys)."""
    cv, fit, held = search.cv, search.fit, search.held
    folds = None
    if cv is not None:
        folds = {"k": len(cv.folds), "folds": [f.scores.to_dict() for f in cv.folds]}
    method = search.result.method
    return tuning_record(
        metric=options.metric.value,
        method=f"cv{options.cv}-{method}" if cv else method,
        data=data,
        holdout=options.holdout,
        seed=SPLIT_SEED,
        cv=folds,
        fit={"rows": fit.rows, **fit.ensemble.to_dict()},
        heldout={"rows": held.rows, **held.ensemble.to_dict()} if held else None,
    )
