"""User-facing errors.

A :class:`UserError` is a mistake in the user's input or configuration. The command line prints
its one-line message (``srmir: error: <where>: <what>``) and exits with status 2, never with a
traceback. Library code raises it with the file:line or config key in the message.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or configuration: reported as one line, exit status 2."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
