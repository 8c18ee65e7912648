"""The `fuse` command line (the console script `fuse = "fuse_cli.cli:main"`).

`app` builds the commands, `options` declares what they share, `commands` holds them;
this package is the only one that imports typer.
"""

from importlib import import_module

from fuse_cli.cli.app import app, main

# Importing a module registers its commands on `app`, in the order `fuse --help` lists.
for _module in ("commands", "build"):
    import_module(f"fuse_cli.cli.{_module}")

__all__ = ["app", "main"]
