"""`python -m fuse_cli` runs the command line."""

from fuse_cli.cli import main

main()
