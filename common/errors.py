"""The one exception type for mistakes a user can fix: raised wherever a user error is found, turned into a single
line `error: ...` and exit code 2 by every command (common/command.py). Internal bugs stay tracebacks."""
from __future__ import annotations


class TwinTurboError(Exception):
    """A user-facing error: bad option, missing or corrupt file, mismatched store. Its message is one line."""


def one_line(message: object) -> str:
    """A message (or an exception's text, else its type's name) on one line, so `error: ...` stays a single line."""
    text = " ".join(str(message).split())
    return text or (type(message).__name__ if isinstance(message, BaseException) else text)


def import_optional(package: str, needed_by: str):
    """Import an optional package (pyproject's extras), or say in one line which spec needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise TwinTurboError(f"{needed_by} needs the package {package}, which is not installed: "
                             f"pip install {package} (or the extra: pip install 'twinturbo[hf]')") from None
