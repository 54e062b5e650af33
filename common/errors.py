"""The one exception type for mistakes a user can fix: raised wherever a user error is found, turned into a single
line `error: ...` and exit code 2 by every command (common/command.py). Internal bugs stay tracebacks."""
from __future__ import annotations


class TwinTurboError(Exception):
    """A user-facing error: bad option, missing or corrupt file, mismatched store. Its message is one line."""


def one_line(message: object) -> str:
    """A message (or an exception's text, else its type's name) on one line, so `error: ...` stays a single line."""
    text = " ".join(str(message).split())
    return text or (type(message).__name__ if isinstance(message, BaseException) else text)


def first_line(message: object, limit: int = 160) -> str:
    """The first line of a message (or an exception's text, else its type's name), cut to `limit` characters: for an
    error that carries a dump after its first line (an SQL statement and its parameters, a traceback)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = lines[0] if lines else one_line(message)
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def first_sentence(message: object, limit: int = 300) -> str:
    """The first sentence of a message on one line (a library's message can run on for lines): cut at its first
    '. ' followed by a capital letter, never inside a URL or a path, and at a word boundary past `limit`."""
    text = one_line(message)
    for i in range(len(text) - 2):
        if text[i] == "." and text[i + 1] == " " and text[i + 2].isupper():
            text = text[:i]
            break
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def import_optional(package: str, needed_by: str):
    """Import an optional package (pyproject's extras), or say in one line which spec needs it and how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise TwinTurboError(f"{needed_by} needs the package {package}, which is not installed: "
                             f"pip install {package} (or the extra: pip install 'twinturbo[hf]')") from None
