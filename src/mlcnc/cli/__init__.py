"""The ``mlcnc`` command: each module of this package adds one sub-command.

A module takes part by defining ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code). Modules import their
heavy dependencies inside ``func`` so that ``mlcnc --help`` stays fast.

``key=value`` config overrides may stand anywhere on the command line, before or after the
options. A user error (a bad config key or value, bad data) is printed as one line naming
the key or file, exit code 2 for usage and config errors, 1 for data errors; ``--debug`` (or
``MLCNC_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcnc",
        description="Long-tailed multi-label classification with MLC-NC and its baselines.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors (or MLCNC_DEBUG=1)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    _optional_star_positionals(parser)
    return parser


def _optional_star_positionals(parser: argparse.ArgumentParser) -> None:
    """A ``nargs="*"`` positional (``KEY=VALUE ...``) is optional: argparse marks it required,
    so a missing run argument was reported as "required: RUN, KEY=VALUE". Every sub-command
    (and theirs) is walked, so a missing argument's error names only what is missing."""
    for action in parser._actions:
        if not action.option_strings and action.nargs == argparse.ZERO_OR_MORE:
            action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _optional_star_positionals(sub)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` words after the options join the overrides."""
    args, extra = parser.parse_known_args(argv)  # --help exits here, before any heavy import
    from mlcnc.config import is_override  # imports torch (the data package)

    overrides = [word for word in extra if is_override(word)]
    unknown = [word for word in extra if not is_override(word)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no key=value overrides: {' '.join(overrides)}")
        args.overrides = [*(args.overrides or []), *overrides]
    return args


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (config, data, missing files): one line, no trace."""
    from mlcnc.data.benchmarks import SplitFileUnavailable
    from mlcnc.data.readers import DataError
    from mlcnc.schema import ConfigError

    return (ConfigError, DataError, FileNotFoundError, SplitFileUnavailable)


USER_OS_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOENT", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EISDIR", "ENOTDIR",
        "ELOOP", "ENAMETOOLONG", "EEXIST", "ENOTEMPTY", "EFBIG", "EXDEV", "ENXIO",
    )
    if hasattr(errno, name)
)  # fmt: skip
"""OS errors a user causes with a path they gave (a read-only folder, a full disk, a folder
where a file goes, a link loop...): one line naming the path, exit 1."""

MAX_MESSAGE = 1000
"""A one-line error is cut to this many characters (a value quoted in it may be huge)."""


def user_message(error: BaseException) -> str | None:
    """The one line for an error that is the user's to fix, or None for a real bug."""
    if isinstance(error, user_error_types()):
        text = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
    elif isinstance(error, OSError) and error.errno in USER_OS_ERRORS:
        names = [n for n in (error.filename, error.filename2) if n is not None]
        where = " -> ".join(str(n) for n in names)
        text = f"{where + ': ' if where else ''}{error.strerror or error}"
    elif isinstance(error, ValueError) and "null byte" in str(error):
        text = "a path holds a NUL byte (\\0); remove it from the file name"
    else:
        return None
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def exit_code(error: BaseException) -> int:
    """2 for usage and config errors, 1 for data and checkpoint errors."""
    from mlcnc.schema import ConfigError

    return 2 if isinstance(error, ConfigError) else 1


def main(argv: list[str] | None = None) -> int:
    """The ``mlcnc`` command: Ctrl-C anywhere (imports and parsing included) is one line and
    exit 130; user errors are one line and exit 1 or 2 (``run_command``)."""
    try:
        return run_command(argv)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: where it stopped, no traceback
        given = sys.argv[1:] if argv is None else argv
        if "--debug" in given or os.environ.get("MLCNC_DEBUG", "") not in ("", "0"):
            raise
        said = str(interrupt).strip() or "interrupted (Ctrl-C)"
        command = next((a for a in given if not a.startswith("-")), "")
        print(f"\nmlcnc{' ' + command if command else ''}: error: {said}", file=sys.stderr)
        return 130


def run_command(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run its subcommand at the boundary where user errors become one
    line (``--debug`` / ``MLCNC_DEBUG=1``: the traceback instead)."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("MLCNC_DEBUG", "") not in ("", "0")
    from mlcnc.cli._warnings import no_srun_hint, one_line_warnings

    try:
        with no_srun_hint(), one_line_warnings(enabled=not debug):
            return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        raise KeyboardInterrupt(str(interrupt).strip() or "interrupted (Ctrl-C)") from None
    except BrokenPipeError:  # `mlcnc ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (*user_error_types(), OSError, ValueError, MemoryError, RuntimeError) as error:
        from mlcnc.cli._errors import is_out_of_memory, out_of_memory_line

        if is_out_of_memory(error) and not debug:
            line = out_of_memory_line(error, args.command)
            print(f"mlcnc {args.command}: error: {line}", file=sys.stderr)
            return 1
        message = user_message(error)
        if debug or message is None:
            raise
        print(f"mlcnc {args.command}: error: {message}", file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
