"""One entry-point convention for every command-line tool.

A mistake the user can fix (a bad flag value, a missing or corrupt file, a full disk) is raised as
:class:`UserError` and printed as one line ``error: <what is wrong>: <what was expected>`` with exit status 2 and no
traceback; anything else is a bug and keeps its traceback. ``--debug`` shows the traceback for user errors too.
Flags that do not parse (draccus/argparse) get the same one line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn
from unittest import mock

from draccus import cfgparsing
from draccus.utils import DecodingError, ParsingError
from draccus.wrappers.docstring import get_attribute_docstring

USER_ERROR_EXIT_CODE = 2
DEBUG_FLAG = "--debug"
# Errors of the file system the user can fix (free space, permissions, a read-only mount).
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
# How a full disk surfaces when it is not an OSError: torch.save's zip writer and safetensors' Rust writer.
_WRITE_FAILURE_MARKERS = ("unexpected pos", "file write failed", "No space left on device", "StorageFull")


class UserError(Exception):
    """A mistake the user can fix. The message names the flag, file or key and says what was expected."""


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch (``RANK``), or not launched by torchrun at all."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2. Under torchrun only rank 0 prints (every rank
    meets the same error in the same checks), so the message shows once."""
    if is_main_process():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


_parse_yaml_value = cfgparsing.parse_string


def _argparse_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    known = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    hints = []
    for flag in re.findall(r"(--[\w.-]+)", message.partition("unrecognized arguments:")[2]):
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        if close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    raise UserError("; ".join([message, *hints]) + ": expected the flags and values that --help lists")


def parse_flag_value(text: str) -> object:
    """A flag's value as draccus reads it (YAML), except text that YAML reads as a mapping with an empty value, such
    as the IPv6 addresses ``::`` and ``fe80::``: no flag means that, so it stays the string the user typed."""
    value = _parse_yaml_value(text)
    if isinstance(value, dict) and not any(mark in text for mark in ("{", ": ", "\n")):
        return text
    return value


def flag_description(config_class: type, name: str) -> str:
    """A config field's description: its inline comment (as draccus reads it for ``--help``)."""
    return get_attribute_docstring(config_class, name).comment_inline.strip()


def print_grouped_help(config_class: type, groups: Mapping[str, Sequence[str]], prog: str, epilog: str = "") -> None:
    """``--help`` of a flat draccus config: its docstring, then per group each flag's type, default and description,
    then ``epilog``. Flags in no group are listed last, under "other"."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    grouped = [name for names in groups.values() for name in names]
    sections = {**groups, "other": [name for name in fields if name not in grouped]}
    lines = [f"usage: {prog} [--FLAG VALUE ...]", "", inspect.getdoc(config_class) or ""]
    for group, names in sections.items():
        present = [fields[name] for name in names if name in fields]
        if present:
            lines += ["", f"{group}:"]
        for field in present:
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            shown = '""' if default == "" else default
            lines.append(f"  --{field.name} {field.type}  (default: {shown})")
            lines.append(f"      {flag_description(config_class, field.name)}")
    print("\n".join([*lines, "", epilog] if epilog else lines))


def _decoding_message(error: ParsingError) -> str:
    if isinstance(error, DecodingError):
        flag = "--" + ".".join(str(part) for part in error.key_path) if error.key_path else "a flag"
        if "list[" in error.message:  # a list flag given "0,1" or "3": show how a list is written
            example = "[0,1]" if re.search(r"list\[(int|float)", error.message) else "[a,b]"
            return f"{flag}: {error.message}: expected a list in brackets, e.g. {flag} {example} (see --help)"
        return f"{flag}: {error.message}: expected a value of the flag's type (see --help)"
    return f"{error}: expected the flags and values that --help lists"


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` is the file system refusing a write (full disk, quota, permissions, read-only mount)."""
    if isinstance(error, OSError) and error.errno in _USER_ERRNOS:
        return True
    return isinstance(error, RuntimeError | OSError) and any(m in str(error) for m in _WRITE_FAILURE_MARKERS)


def _file_system_message(error: BaseException, path: Path | str | None = None) -> str:
    named = path or getattr(error, "filename", None)
    where = f"{named}" if named else "a file"
    if isinstance(error, OSError) and error.errno in _USER_ERRNOS:
        reason = os.strerror(error.errno)
    else:
        reason = "the write failed (a full disk?)"
    return f"cannot write {where}: {reason}: expected free space and write permission there"


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turns a full disk, a quota or a permission error raised while writing ``path`` into a UserError naming it."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as error:
        if is_write_failure(error):
            raise UserError(_file_system_message(error, path)) from error
        raise


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Within a block that only checks user input, turns ``kinds`` (default ValueError, OSError, KeyError) into
    UserError with the same message."""
    caught = kinds or (ValueError, OSError, KeyError)
    try:
        yield
    except UserError:
        raise
    except caught as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        raise UserError(message.rstrip(".")) from error


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` (usually a ``draccus.wrap``-ed function) under the convention above."""
    debug = DEBUG_FLAG in sys.argv[1:]
    if debug:
        sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
    try:
        with (
            mock.patch.object(argparse.ArgumentParser, "error", _argparse_error),
            mock.patch.object(cfgparsing, "parse_string", parse_flag_value),
        ):
            main()
    except (UserError, ParsingError, OSError, RuntimeError) as error:
        if isinstance(error, UserError):
            message = str(error)
        elif isinstance(error, ParsingError):
            message = _decoding_message(error)
        elif is_write_failure(error):
            message = _file_system_message(error)
        else:
            raise
        if debug:
            raise
        fail(" ".join(message.split()))
