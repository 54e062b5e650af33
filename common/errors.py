"""The one exception type for mistakes a user can fix; the CLIs print it as a single line and exit 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class TwinTurboError(Exception):
    """A user-facing error: bad option, missing or corrupt file, mismatched store. Its message is one line."""


def exit_on_user_error(main: F) -> F:
    """Wrap a CLI entry point so a TwinTurboError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except TwinTurboError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
