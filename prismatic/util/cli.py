"""One entry-point convention for every command-line tool.

A mistake the user can fix (a bad flag value, a missing or corrupt file, a full disk) is raised as
:class:`UserError` and printed as one line ``error: <what is wrong>: <what was expected>`` with exit status 2 and no
traceback; anything else is a bug and keeps its traceback. ``--debug`` shows the traceback for user errors too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """A mistake the user can fix. The message names the flag, file or key and says what was expected."""


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` (usually a ``draccus.wrap``-ed function) under the convention above."""
    debug = DEBUG_FLAG in sys.argv[1:]
    if debug:
        sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
    try:
        main()
    except UserError as error:
        if debug:
            raise
        fail(" ".join(str(error).split("\n")))
