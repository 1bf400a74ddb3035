"""What every tivm command shares: one-line errors, exit codes, option bounds, text safe for a terminal.

Every failure a user can cause prints one line, ``error: <file or option>: <problem>``, on stderr and exits
with status 2 (130 when interrupted); there is no traceback and no usage box, whether the problem is in an
option (found by the parser), a file (a TivmError) or the system (a full disk).
"""

from __future__ import annotations

import math
import os
import sys
from typing import NoReturn

import typer

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException, UsageError

from tivm.runtime.errors import TivmError

EXIT_FAILURE = 2  # bad input, as for usage errors: the same code whatever the user got wrong
EXIT_INTERRUPTED = 130
MAX_HOP_SECONDS = 60.0  # a hop beyond this leaves most of a song unembedded


def printable(text: object) -> str:
    """`text` with control and other invisible characters escaped (\\n, \\x1b, \\u202e …).

    Titles and file names come from files: an escape sequence or a newline in a title tag must not move
    the cursor, recolour the terminal or forge a row of the table.
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def say_error(message: object) -> None:
    typer.echo(f"error: {printable(message)}", err=True)


def fail(message: object) -> NoReturn:
    """Print the one error line and stop with EXIT_FAILURE."""
    say_error(message)
    raise typer.Exit(EXIT_FAILURE)


def max_threads() -> int:
    """onnxruntime threads beyond the cores only contend with each other (and with decoding)."""
    return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int | None:
    if threads is not None and not 1 <= threads <= max_threads():
        raise typer.BadParameter(f"must be between 1 and {max_threads()} (this machine's cores), got {threads}",
                                 param_hint="--threads")
    return threads


def check_hop(hop: float) -> float:
    if not (math.isfinite(hop) and 1.0 <= hop <= MAX_HOP_SECONDS):
        raise typer.BadParameter(f"must be a number of seconds between 1 and {MAX_HOP_SECONDS:g}, got {hop}",
                                 param_hint="--hop")
    return hop


def run(app: typer.Typer) -> NoReturn:
    """Run a Typer app as a program: the errors above as one line each, then exit with the command's status."""
    try:
        status = app(standalone_mode=False)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else os.path.basename(sys.argv[0])
        say_error(f"{exc.format_message()} (see {command} --help)")
        status = EXIT_FAILURE
    except ClickException as exc:
        say_error(exc.format_message())
        status = EXIT_FAILURE
    except TivmError as exc:
        say_error(exc)
        status = EXIT_FAILURE
    except KeyboardInterrupt:
        say_error("interrupted")
        status = EXIT_INTERRUPTED
    except OSError as exc:  # the system's, not ours: a full disk, a vanished folder
        where = f"{exc.filename}: " if exc.filename else ""
        say_error(f"{where}{exc.strerror or exc}")
        status = EXIT_FAILURE
    sys.exit(status if isinstance(status, int) else 0)
