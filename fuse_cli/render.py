"""The human-readable reports: everything fuse shows on a terminal but progress.

`cli/` decides what to show (a report, JSON, an error) and this module shows it (with
`render_soup` for the soup, calibration and build reports, and `progress` for what runs
meanwhile); they are the only modules that write to the terminal. Text that comes from a file
(names, versions, provenance, paths) goes through `literal` before Rich sees it: markup
is escaped and control characters are shown as `\x1b`-style escapes, never sent to the
terminal raw.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fuse_cli.compatibility import shape_text
from fuse_cli.formats.screening import size_text
from fuse_cli.provenance import TuningSummary, recorded_temperatures, tuning_summary

if TYPE_CHECKING:
    from fuse_cli import soup_tuning
    from fuse_cli.evaluation import EvaluationReport
    from fuse_cli.export import ExportReport
    from fuse_cli.inspection import InspectReport, ModelInfo
    from fuse_cli.report import MergeReport, PlanReport, VerifyReport
    from fuse_cli.search import Scores
    from fuse_cli.tuning import TuneReport

_SHOWN_AS_ESCAPES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def literal(value: object) -> str:
    """`value` as text that Rich prints exactly: markup escaped, control characters
    (ANSI escapes, bidi overrides, line breaks) shown as `\x1b`-style escapes."""
    text = str(value)
    if not text.isprintable():
        text = "".join(_shown(ch) for ch in text)
    return escape(text)


def _shown(ch: str) -> str:
    if ch == " " or unicodedata.category(ch) not in _SHOWN_AS_ESCAPES:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}")


console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
# A terminal wraps long lines at word boundaries; a pipe or a log keeps each message on
# one line (grep-able, and a failure is one line).
for _console in (console, err_console):
    _console.soft_wrap = not _console.is_terminal


def print_warnings(warnings: list[str]) -> None:
    """Each warning as one line on stderr."""
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {literal(warning)}")


def print_error(message: str) -> None:
    """An error as one line (or two) on stderr."""
    err_console.print(f"[red]error:[/] {literal(message)}")


def print_merge_report(report: MergeReport) -> None:
    """The human-readable merge report on stdout."""
    table = Table(title=f"members ({report.mode}, {report.inputs} inputs)", title_justify="left")
    for column in ("file", "input shape", "output shape", "params", "weight"):
        table.add_column(column, justify="right" if column in ("params", "weight") else "left")
    for m in report.members:
        weight = f"{m.weight:.4g}"
        if abs(m.weight_given - m.weight) > 1e-12:
            weight = f"{m.weight_given:g} → {weight}"
        table.add_row(literal(m.file), ", ".join(m.input_shapes), ", ".join(m.output_shapes),
                      f"{m.params:,}", weight)
    console.print(table)
    for m in report.members:
        if m.migrations:
            console.print(f"{literal(m.file)}: legacy file migrated by "
                          f"{literal(', '.join(m.migrations))}")
    print_written(report)
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s{parts_text(report.parts)}")


def print_merge_plan(plan: PlanReport) -> None:
    """The human-readable dry-run plan on stdout: what would be merged, and where it would go."""
    table = Table(title=f"dry run: members ({plan.mode}, {plan.inputs} inputs)",
                  title_justify="left")
    for column in ("file", "input shape", "output shape", "activation", "params", "weight"):
        table.add_column(column, justify="right" if column in ("params", "weight") else "left")
    for m in plan.members:
        weight = f"{m.weight:.4g}"
        if abs(m.weight_given - m.weight) > 1e-12:
            weight = f"{m.weight_given:g} → {weight}"
        activations = ", ".join(a or "unknown" for a in m.last_activations)
        if m.to_probabilities:
            activations += " → " + ", ".join(a for a in m.to_probabilities if a)
        table.add_row(literal(m.file), ", ".join(m.input_shapes), ", ".join(m.output_shapes),
                      literal(activations), f"{m.params:,}", weight)
    console.print(table)
    for m in plan.members:
        if m.migrations:
            console.print(f"{literal(m.file)}: legacy file migrated by "
                          f"{literal(', '.join(m.migrations))}")
    inputs = "; ".join(", ".join(group) for group in plan.input_shapes)
    console.print(f"inputs:   {plan.inputs}: {inputs}")
    console.print(f"formula:  {literal(plan.formula)}")
    replaces = " (replaces the existing file, --force)" if plan.replaces else ""
    console.print(f"output:   {literal(plan.output)}{replaces}")
    for item in plan.exports:
        replaces = " (replaces the existing one, --force)" if item["replaces"] else ""
        console.print(f"export:   {literal(str(item['path']))} ({item['format']}){replaces}")
    check = "reload and compare with the formula" if plan.verify else "skipped (--no-verify)"
    console.print(f"verify:   {check}")
    console.print("dry run:  every check passed; nothing was written")


def parts_text(parts: dict[str, float]) -> str:
    """` (load and check 2.3 s, build 0.4 s, ...)`, or nothing."""
    if not parts:
        return ""
    return " (" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items()) + ")"


def print_written(report: MergeReport) -> None:
    """The formula, the file written and its verification: merge's and tune's last lines."""
    for line in sharing_lines(report.sharing, [m.file for m in report.members]):
        console.print(f"shared:   {literal(line)}")
    console.print(f"formula:  {literal(report.formula)}")
    console.print(f"output:   {literal(report.output)} ({size_text(report.size)})")
    if report.loads_without_fuse:
        console.print("loading:  loads with plain keras.saving.load_model (nothing of fuse "
                      "needed)")
    else:
        console.print("loading:  needs `import fuse_cli.layers` before keras.saving.load_model "
                      "(or fuse export for SavedModel/LiteRT/ONNX)")
    soup = report.built.get("soup")
    if soup:
        console.print(f"soup:     one model: {soup['averaged']:,} variables averaged, "
                      f"{soup['copied']:,} integer ones copied; {_batchnorm_text(soup)}")
    if report.verified and report.max_abs_error is not None and soup:
        console.print("verified: reloaded; every variable is the members' weighted average "
                      f"and it predicts as built, max abs error {report.max_abs_error:.2e}")
    elif report.verified and report.max_abs_error is not None:
        console.print(f"verified: reloaded and matches the formula, max abs error "
                      f"{report.max_abs_error:.2e}")
    else:
        console.print("verified: skipped (--no-verify)")


def _batchnorm_text(soup: dict[str, Any]) -> str:
    found = soup.get("batchnorm") or {}
    if found.get("statistics") != "recomputed":
        return "BatchNormalization statistics averaged"
    count = found.get("layers", "?")
    layers = f"{count} layer{'' if count == 1 else 's'}"
    return (f"BatchNormalization statistics of {layers} recomputed on "
            f"{literal(str(found.get('data', '?')))} ({found.get('rows', '?')} rows)")


def sharing_lines(sharing: dict[str, Any] | None, labels: list[str]) -> list[str]:
    """What members share and compute once, one line per shared segment, and the total.

    Nothing when nothing is shared (the JSON report still says so).
    """
    if not sharing:
        return []
    if not sharing.get("enabled"):
        return ["off (--no-share)"]
    segments = sharing.get("segments") or []
    if not segments:
        return []
    lines = []
    for seg in segments:
        names = [labels[i] if 0 <= i < len(labels) else str(i) for i in seg["members"]]
        after = f" after {seg['after']}" if seg.get("after") else ""
        layers = ", ".join(seg["layers"])
        lines.append(f"{seg['name']}{after} = {layers} ({seg['layer_count']} layers, "
                     f"{seg['params']:,} params) computed once for {', '.join(names)}")
    if sharing.get("params_saved") and sharing.get("bytes_saved") is not None:
        lines.append(f"saves {sharing['params_saved']:,} params "
                     f"({size_text(sharing['bytes_saved'])} of weights)")
    return lines


def print_exports(exports: list[ExportReport]) -> None:
    """The human-readable report of each artifact written, on stdout."""
    for item in exports:
        console.print(f"exported: {literal(item.path)} ({item.format}, {size_text(item.size)})")
        if item.verified and item.max_abs_error is not None:
            console.print(f"parity:   matches the Keras model in {literal(str(item.runtime))}, "
                          f"max abs error {item.max_abs_error:.2e} (atol {item.atol:g})")
        else:
            console.print("parity:   skipped (--no-verify)")


def print_inspect_report(report: InspectReport) -> None:
    """The human-readable inspect report on stdout."""
    for i, info in enumerate(report.models):
        if i:
            console.print()
        _print_model_info(info)
    c = report.compatibility
    if c is None:
        return
    console.print()
    if not c.mergeable:
        console.print(f"can merge: [red]no[/]: {literal(str(c.reason))}")
        return
    console.print(f"can merge: yes, with {c.inputs} inputs; outputs {', '.join(c.outputs)}")
    if c.product:
        console.print("           --mode product too: every output is >= 0")
    else:
        console.print(f"           not --mode product: {literal(str(c.product_reason))}")
    if c.soup:
        console.print("           --mode soup too: one architecture (averaging is only for "
                      "members fine-tuned from one start: measure with fuse tune)")
    else:
        console.print(f"           not --mode soup: {literal(str(c.soup_reason))}")


def _tensor_text(t: Any) -> str:
    shape = shape_text(t.shape, batch=False)
    return f"{literal(t.name)} {shape} {literal(t.dtype)}"


def _member_activations(member: dict[str, Any]) -> str:
    """An embedded member's last activations, with what `--to-probabilities` appended."""
    added = member.get("to_probabilities") or [None] * len(member["last_activations"])
    return ", ".join((a or "unknown") + (f" → {t}" if t else "")
                     for a, t in zip(member["last_activations"], added, strict=False))


def _print_model_info(info: ModelInfo) -> None:
    written = f", written by Keras {literal(info.keras_version)}" if info.keras_version else ""
    console.print(f"[bold]{literal(info.file)}[/] ({info.format}{written}): model "
                  f"{literal(repr(info.name))}")
    console.print(f"  inputs:     {'; '.join(_tensor_text(t) for t in info.inputs)}")
    console.print(f"  outputs:    {'; '.join(_tensor_text(t) for t in info.outputs)}")
    activations = ", ".join(a or "unknown" for a in info.last_activations)
    if info.ensemble is not None and info.ensemble.soup is None:
        members = "; ".join(_member_activations(m) for m in info.ensemble.members)
        activations = f"weighted {info.ensemble.mode} of the members' {members}"
    console.print(f"  activation: {literal(activations)}")
    console.print(f"  params:     {info.params:,}")
    console.print(f"  size:       {size_text(info.size)}")
    console.print(f"  sha256:     {info.sha256}")
    if info.migrations:
        console.print(f"  legacy:     migrated by the rules {literal(', '.join(info.migrations))}")
    e = info.ensemble
    if e is None:
        return
    renormalized = ", renormalized" if e.renormalize else ""
    weights = ", ".join(f"{w:.4g}" for w in e.weights)
    if e.weights_given is not None:
        weights = f"{', '.join(f'{w:g}' for w in e.weights_given)} → {weights}"
    console.print(f"  ensemble:   {e.mode}{renormalized}, {e.inputs} inputs, weights {weights}"
                  + (f" ({literal(e.tool)})" if e.tool else ""))
    for m in e.members:
        source = literal(str(m["file"])) if m["file"] else "(not recorded)"
        digest = literal(m["sha256"]) if m["sha256"] else "(no SHA-256 recorded)"
        console.print(f"    member {m['index']}: {source} → {literal(m['layer'])}, sha256 {digest}")
    if e.soup is not None:
        console.print(f"  soup:       one model, its variables the members' weighted average; "
                      f"{_batchnorm_text(e.soup)}")
    labels = [f"member {m['index']}" for m in e.members]
    for line in sharing_lines(e.sharing, labels):
        console.print(f"  shared:     {literal(line)}")
    tuning = tuning_summary(e.tuning)
    if tuning is not None:
        console.print(f"  tuned:      {literal(_tuning_text(tuning))}")
    temperatures = recorded_temperatures(e.tuning)
    if temperatures:
        console.print(f"  calibrated: temperature T = {temperatures[0]:.4g}, built in after the "
                      "combination (softmax(log(p) / T))")
    if e.preprocessing is not None:
        console.print(f"  images:     {literal(_preprocessing_text(e.preprocessing))}")


def _preprocessing_text(pre: dict[str, Any]) -> str:
    """How a tune fed its images: `x * 0.00392 + 0; rgb.keras 12x10 rgb, ...`."""
    scale = 1.0 if pre["rescale"] is None else pre["rescale"]
    offset = 0.0 if pre["offset"] is None else pre["offset"]
    sizes = ", ".join(f"{m['file']} {m['height']}x{m['width']} {m['color_mode']}"
                      for m in pre["members"])
    text = f"pixels (0-255) x {scale:.6g} + {offset:g}, resized bilinear: {sizes}"
    if pre.get("baked"):
        height, width, _ = pre["input"]
        text += f"; built into the file, which takes raw RGB pixels at {height}x{width}"
    return text


def _tuning_text(tuning: TuningSummary) -> str:
    """One line on how `fuse tune` chose the weights, from the file's provenance."""
    text = (f"{tuning.method} on {tuning.metric}, data {tuning.data_file} "
            f"({tuning.rows} rows, holdout {tuning.holdout})")
    losses = tuning.cv_log_losses
    if losses:
        text += f"; {len(losses)}-fold cv log-loss {sum(losses) / len(losses):.4f}"
    scores = ", ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in tuning.heldout.items())
    return f"{text}; held out: {scores}" if scores else text


def print_verify_report(report: VerifyReport) -> None:
    """The human-readable verify report on stdout."""
    if report.backend:
        console.print(f"backend:  {literal(report.backend)}")
    if report.soup is not None:
        skipped = (" (BatchNormalization statistics recomputed from data: not re-checked)"
                   if report.soup else "")
        console.print(f"verified: every variable of {literal(report.file)} is the weighted "
                      f"average of its {len(report.members)} members', bit for bit{skipped}")
        for m in report.members:
            console.print(f"member {m.index}: {literal(str(m.given))} has the recorded "
                          "SHA-256")
        return
    console.print(f"verified: {literal(report.file)} computes its {report.mode} formula on its "
                  f"{len(report.members)} embedded members, max abs error "
                  f"{report.formula_max_abs_error:.2e}")
    if not report.provenance_recorded:
        console.print("          (the file records no provenance)")
    for seg in report.shared:
        members = ", ".join(str(i) for i in seg["members"])
        console.print(f"          members {members} run through the shared segment "
                      f"{literal(seg['name'])}, as the provenance records; each is checked "
                      "as that segment followed by its own part")
    for m in report.members:
        if m.given is None:
            continue
        error = f"{m.max_abs_error:.2e}" if m.max_abs_error is not None else "n/a"
        console.print(f"member {m.index}: {literal(m.given)} has the recorded SHA-256 and "
                      f"matches its embedded copy, max abs error {error}")



def print_evaluation(report: EvaluationReport) -> None:
    """The human-readable evaluation table on stdout."""
    table = Table(title=f"{report.data}: {report.rows} rows", title_justify="left")
    for column in ("model", "output shape", "accuracy", "log-loss", "Brier", "ECE"):
        table.add_column(column, justify="left" if column in ("model", "output shape")
                         else "right", overflow="fold")
    for m in report.models:
        table.add_row(literal(m.file), m.output_shape, f"{m.accuracy:.4f}",
                      *("n/a" if v is None else f"{v:.4f}" for v in (m.log_loss, m.brier, m.ece)))
    console.print(table)
    if report.skipped:
        console.print(f"skipped:  {report.skipped} images that cannot be decoded")
    if report.predictions:
        console.print(f"saved:    {literal(report.predictions)} (predictions, labels, SHA-256s)")
    if report.plot:
        console.print(f"plot:     {literal(report.plot)} (reliability diagram)")


_SEARCHES = {
    "grid": "exact grid over the first weight, 0 to 1 in steps of 0.01",
    "greedy": "greedy selection with replacement (Caruana), 100 rounds",
}


def print_tune_report(report: TuneReport | soup_tuning.SoupTuneReport) -> None:
    """The human-readable tuning report on stdout."""
    from fuse_cli.soup_tuning import SoupTuneReport

    if isinstance(report, SoupTuneReport):
        from fuse_cli.render_soup import print_soup_report

        print_soup_report(report)
        return
    fit, held = report.fit, report.heldout
    split = (f"{fit.rows} to fit the weights, {held.rows} held out (--holdout "
             f"{report.holdout:g}, seed {report.seed})" if held else
             f"all {fit.rows} to fit the weights")
    console.print(f"data:     {literal(report.data)}, {report.rows} rows: {split}")
    console.print(f"search:   {_SEARCHES.get(report.method, report.method)}; "
                  f"metric {report.metric}")
    if report.cv is not None:
        _print_folds(report)
    table = Table(title_justify="left")
    table.add_column("model", overflow="fold")
    table.add_column("weight", justify="right")
    for part in ("fit", "held out") if held else ("fit",):
        table.add_column(f"{part}\naccuracy", justify="right")
        table.add_column(f"{part}\nlog-loss", justify="right")
    parts = [fit, held] if held else [fit]
    for i, (label, weight) in enumerate(zip(report.files, report.weights, strict=True)):
        table.add_row(literal(label), f"{weight:.4g}", *_score_cells([p.members[i] for p in parts]))
    equal = f"{1 / len(report.files):.4g} each"
    table.add_row("equal weights", equal, *_score_cells([p.equal_weights for p in parts]))
    table.add_row("[bold]tuned ensemble[/]", "", *_score_cells([p.ensemble for p in parts]),
                  style="bold")
    console.print(table)
    if report.calibration is not None:
        from fuse_cli.render_soup import print_calibration

        print_calibration(report.calibration)
    print_written(report.merge)
    if report.plot:
        console.print(f"plot:     {literal(report.plot)}")
    console.print(f"elapsed:  {report.elapsed_seconds:.1f} s{parts_text(report.merge.parts)}")


def _print_folds(report: TuneReport) -> None:
    """Each fold's weights (searched without it) and scores (on it), then mean and spread."""
    cv = report.cv
    assert cv is not None
    console.print(f"cv:       {len(cv.folds)} folds (stratified, seed {report.seed}): each "
                  "fold scored with the weights searched on the others; the weights are "
                  "their mean")
    table = Table(title_justify="left")
    # Two members: the first's weight (the second's is 1 - it); more: every weight.
    shown = 1 if len(report.files) == 2 else len(report.files)
    heading = (f"weight of {literal(report.files[0])}" if shown == 1
               else "weights (" + ", ".join(literal(f) for f in report.files) + ")")
    for column in ("fold", "rows", heading, "accuracy", "log-loss"):
        table.add_column(column, justify="left" if column == "fold" else "right",
                         overflow="fold")
    for i, fold in enumerate(cv.folds, start=1):
        table.add_row(str(i), str(fold.rows),
                      ", ".join(f"{w:.4g}" for w in fold.weights[:shown]),
                      *_score_cells([fold.scores]))
    cells = []
    for metric in ("accuracy", "log_loss"):
        found = cv.summary(metric)
        cells.append("n/a" if found is None else f"{found[0]:.4f} ± {found[1]:.4f}")
    spreads = []
    for k in range(shown):
        values = [f.weights[k] for f in cv.folds]
        mean = sum(values) / len(values)
        spread = (sum((w - mean) ** 2 for w in values) / len(values)) ** 0.5
        spreads.append(f"{mean:.4g} ± {spread:.2g}")
    table.add_row("mean ± sd", "", ", ".join(spreads), *cells, style="bold")
    console.print(table)


def _score_cells(scores: list[Scores]) -> list[str]:
    cells = []
    for s in scores:
        cells.append(f"{s.accuracy:.4f}")
        cells.append("n/a" if s.log_loss is None else f"{s.log_loss:.4f}")
    return cells
