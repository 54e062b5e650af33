"""The one way every command (tt-extract, tt-train, tt-sweep, tt-report, tt-predict) ends: user errors
(`TwinTurboError`) and click's own usage errors as a single line `error: ...` on stderr with exit code 2, Ctrl-C as a
line saying how to resume with exit code 130; internal bugs stay tracebacks.
"""
from __future__ import annotations

import os
import sys

import click

from .errors import TwinTurboError, one_line
from .interrupts import interrupts_kept
from .plugins import use_plugins


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
            with interrupts_kept():  # Ctrl-C landing in a weakref callback is not lost (common/interrupts.py)
                code = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except click.ClickException as err:
            print(f"error: {one_line(err.format_message())}", file=sys.stderr)
            sys.exit(2)
        except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt) and of EOF at a prompt
            print(f"error: {self.interrupt_hint}", file=sys.stderr)
            sys.exit(130)
        except TwinTurboError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"error: {self.interrupt_hint}", file=sys.stderr)
            sys.exit(130)
        if isinstance(code, int) and code:  # e.g. --help returns 0, a click Exit(n) returns n
            sys.exit(code)


def plugins_option(command):
    """--plugins FILE.py[,FILE.py] (common/plugins.py): the console entry point (twinturbo/commands.py) has loaded
    them before this command was built; here they are checked to be in force (a command invoked another way
    refuses, saying so)."""
    def put_in_force(ctx, param, value):
        if value:
            use_plugins(*[part for part in value.split(",") if part.strip()])
        return value

    return click.option("--plugins", callback=put_in_force, expose_value=False, is_eager=True,
                        help="Python files defining terms of Eq. 22 or heads (each a module with TERM, a "
                             "twinturbo.train.terms.Term, or HEAD, a twinturbo.train.heads.Head; help() of either says "
                             "what it holds), besides the package's own and those of installed entry points (groups "
                             "twinturbo.terms, twinturbo.heads).")(command)
