"""`fuse build`: a merge or a tune declared in a recipe file, built reproducibly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fuse_cli.cli.app import app, command, emit, import_keras_quietly, quiet_retracing
from fuse_cli.cli.options import DebugOption, FileNamesAreNotOptions, JsonOption

if TYPE_CHECKING:
    from fuse_cli.building import BuildReport


@app.command("build", cls=FileNamesAreNotOptions)
def build_command(
    recipe: Annotated[
        Path, typer.Argument(help="A recipe (TOML): members, mode, weights or a [tune] "
                             "table, output; see the README's \"fuse build\".",
                             show_default=False, metavar="RECIPE.toml")
    ],
    check: Annotated[
        bool, typer.Option("--check", help="Build nothing: exit 0 if OUTPUT is what the "
                           "recipe builds now (same recipe, members and bytes), else exit 7 "
                           "with the reason.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    lock: Annotated[
        Path | None,
        typer.Option("--lock", metavar="FILE.toml", show_default=False,
                     help="Write what the build resolved (members' SHA-256, the weights a "
                     "tune chose, versions) to FILE; with --locked, rebuild from it.")
    ] = None,
    locked: Annotated[
        bool, typer.Option("--locked", help="Rebuild from --lock FILE without the data pass "
                           "and the search; exit 7 if the recipe or a member changed since.")
    ] = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Build what RECIPE declares: a merge, or a tune (a [tune] table), into its output.

    The same recipe on the same files writes the same bytes (SOURCE_DATE_EPOCH sets the
    time recorded in .keras archives).

    Examples:

      fuse build ensemble.toml

      fuse build ensemble.toml --check || fuse build ensemble.toml --force
    """
    with command("build", debug=debug, json_output=json_output):
        from fuse_cli.building import build_recipe, check_build

        # Every check that needs no model, before TensorFlow.
        request = check_build(recipe, check_only=check, force=force, lock=lock, locked=locked,
                              quiet=not debug)
        import_keras_quietly(debug)
        quiet_retracing(debug)
        emit("build", json_output,
             lambda say, advance: build_recipe(request, progress=say, advance=advance),
             _show, bars=True)


def _show(report: BuildReport) -> None:
    from fuse_cli import render
    from fuse_cli.render_soup import print_build_report
    from fuse_cli.report import MergeReport

    if isinstance(report.result, MergeReport):  # a merge, or a tune rebuilt from its lock
        render.print_merge_report(report.result)
    elif report.result is not None:
        render.print_tune_report(report.result)
    print_build_report(report)
