"""The `fuse` command line (the console script `fuse = "fuse_cli.cli:main"`).

`app` builds the commands, `options` declares what they share, `commands` holds them;
this package is the only one that imports typer.
"""

from fuse_cli.cli import build, commands  # noqa: F401  (registers the commands on `app`)
from fuse_cli.cli.app import app, main

__all__ = ["app", "main"]
