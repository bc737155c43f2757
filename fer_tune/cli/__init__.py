"""The `fer-tune` command line: `fer_tune.cli.scripts` parses, `fer_tune.cli.commands` calls the library."""

from fer_tune.cli.scripts import main

__all__ = ["main"]
