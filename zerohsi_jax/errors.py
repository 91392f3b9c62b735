"""The user's mistakes, told apart from our bugs.

A `UserError` is something the user gave or can fix: a file (missing, unreadable, malformed), a
config key, a command-line value, an output path, a run folder (busy, unfinished, holding another
problem, damaged). Its message names the file or key and says what to do, on one line. The
command line prints it as `zerohsi-jax <command>: error: <message>` and exits with status 2;
any other exception is a bug of ours and keeps its traceback (`--debug` shows the traceback of a
user error too).

The package's file, config and run-folder errors derive from `UserError` (and from the built-in
class they always were, `ValueError` or `FileNotFoundError`, so existing `except` clauses keep
working). The rasterizer's file errors (`splat.PlyFormatError`, `splat.CameraFileError`) count
as user errors too (see `is_user_error`).
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """A mistake in what the user gave; the message names the file or key and the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the config or a command names does not exist."""


class InputError(UserError, ValueError):
    """A file or command-line value whose content is wrong (a shape, a count, a range)."""


class OutputPathError(UserError, OSError):
    """An output path that cannot be written: a file where a folder should be, an unwritable
    folder, an unknown picture extension."""


# An OS refusal on a path (no such file, permission denied, a folder given for a file) carries the
# path in its message and is the user's to fix, wherever it was raised.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)

# Error classes of the rasterizer, which does not import this module (it is a package of its own);
# looked up only where the rasterizer is loaded already, so that this check imports nothing heavy.
_RASTERIZER_ERRORS = ("PlyFormatError", "CameraFileError")


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is the user's to fix (printed on one line) rather than a bug (a traceback)."""
    if isinstance(err, (UserError, *_PATH_ERRORS)):
        return True
    splat = sys.modules.get("zerohsi_jax.splat")
    return any(isinstance(err, cls) for name in _RASTERIZER_ERRORS if (cls := getattr(splat, name, None)))


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (a YAML parser's or NumPy's may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


__all__ = ["InputError", "MissingFileError", "OutputPathError", "UserError", "is_user_error", "one_line"]
