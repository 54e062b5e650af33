"""The one exception type for mistakes a user can fix, and the one way every command turns it into an exit.

`TwinTurboError` is raised wherever a user error is found; `Command` (the click command class of tt-extract,
tt-train, tt-sweep and tt-report) prints it, and click's own usage errors, as a single line `error: ...` on stderr and
exits with code 2. Internal bugs stay tracebacks.
"""
from __future__ import annotations

import os
import sys

import click


class TwinTurboError(Exception):
    """A user-facing error: bad option, missing or corrupt file, mismatched store. Its message is one line."""


def one_line(message: object) -> str:
    """A message (or an exception's text, else its type's name) on one line, so `error: ...` stays a single line."""
    text = " ".join(str(message).split())
    return text or (type(message).__name__ if isinstance(message, BaseException) else text)


class Command(click.Command):
    """A click command whose user errors end in one line on stderr and exit code 2, never a traceback.

    `interrupt_hint` is what Ctrl-C says (exit code 130). The invocation is kept in `ctx.obj["argv"]` (a store
    records the command line that made it).
    """

    interrupt_hint = "interrupted"

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102  (click's signature)
        argv = list(sys.argv[1:] if args is None else args)
        program = prog_name or (os.path.basename(sys.argv[0]) if args is None else self.name) or ""
        extra.setdefault("obj", {"argv": [program, *map(str, argv)]})
        try:
            code = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except click.ClickException as err:
            print(f"error: {one_line(err.format_message())}", file=sys.stderr)
            sys.exit(2)
        except click.exceptions.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(130)
        except TwinTurboError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"error: {self.interrupt_hint}", file=sys.stderr)
            sys.exit(130)
        if isinstance(code, int) and code:  # e.g. --help returns 0, a click Exit(n) returns n
            sys.exit(code)
