"""The project's user-facing errors: the CLI prints their message as one line and exits 2.

Anything else that escapes a command is a bug and keeps its traceback. Each class is also
the built-in exception it refines, so code that handles ``ValueError`` or
``FileNotFoundError`` (a sweep row that cannot be filled, say) handles these too.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (a bad value, a missing path); the message is one line."""


class InputError(UserError, ValueError):
    """A value, name or file content that orchestrate cannot use."""


class MissingInput(UserError, FileNotFoundError):
    """A path, URI or stored result that does not exist."""
