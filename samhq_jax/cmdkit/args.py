"""The argument parsing every command shares: one-line argument errors (exit 2), ``--version``,
``--help`` texts that end with the exit notes, range-checked argument types (:func:`int_at_least`,
:func:`float_in`: a value out of range is refused by the parser, before any work), the
``--overwrite`` flag, and the multi-process flags (``--coordinator``, ``--num-processes``,
``--process-id``) with their checks."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import sys
import textwrap
from collections.abc import Callable
from typing import Any, NoReturn

from samhq_jax.cmdkit.guard import CACHE_ENV, DEBUG_ENV, EXIT_RUNTIME, EXIT_USAGE
from samhq_jax.errors import InputError

EXIT_NOTES = f"""\
exit status: 0 done; {EXIT_USAGE} bad arguments or input (a flag out of range or in an impossible
combination, a missing or unreadable file, a bad prompt, an unknown checkpoint format, a bad
config.json, an output that exists without --overwrite); {EXIT_RUNTIME} a failure while running (an
XLA runtime error such as out of memory, or an internal error: a bug, please report it); 130
interrupted. Errors are one line on stderr, "PROG: error: message"; set {DEBUG_ENV}=1 for the Python
traceback instead. Compiled models are cached on disk between runs in ~/.cache/samhq-jax/xla (move
it with {CACHE_ENV}=DIR, turn it off with {CACHE_ENV}=0)."""
CHECKPOINT_HELP = (
    "one of our checkpoint folders, an official .pth / .safetensors file, a Hugging Face folder, or a hub "
    "repo id owner/name (from the local hub cache); a path that does not exist is never sent to the hub "
    "unless it has that form"
)
SCALE_OUT_HELP = """\
several devices and hosts:
  Every local device takes its own image (a jax.make_mesh "data" axis; each device runs the
  one-image program, so the results are those of one device, bit for bit). For several processes
  (one per host, or several on one machine) run the same command in each with --coordinator
  HOST:PORT (process 0's address, the same everywhere) --num-processes N --process-id I (0 .. N-1):
  process I takes the I-th contiguous share of the images, in order."""


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), never a usage dump or a traceback.

    Shared by every command of the project (``samhq``, ``samhq-convert``, ``samhq-train``,
    ``samhq-eval``, ``samhq-bench``, ``samhq parity``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog.split()[0]}: error: {message}\n")


def package_version() -> str:
    """``samhq-jax <version>`` of the installed distribution."""
    try:
        return f"samhq-jax {importlib.metadata.version('samhq-jax')}"
    except importlib.metadata.PackageNotFoundError:
        return "samhq-jax (not installed: version unknown)"


def help_layout(epilog: str) -> dict[str, Any]:
    """Keyword arguments of a parser (or sub-parser) whose ``--help`` ends with ``epilog`` and the
    exit notes, laid out as written."""
    text = f"{epilog.strip(chr(10))}\n\n{EXIT_NOTES}" if epilog.strip() else EXIT_NOTES
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def docstring_help(doc: str) -> str:
    """A command module's docstring as ``--help`` text: without its summary paragraph (the
    description) and without reST quoting."""
    body = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
    return textwrap.dedent(body).replace("``", "").replace("::\n", ":\n").strip("\n")


def command_parser(prog: str, description: str, epilog: str = "") -> OneLineParser:
    """The top-level parser of a command: one-line errors, ``--version``, ``epilog`` and the exit
    notes at the end of ``--help``."""
    parser = OneLineParser(prog=prog, description=description, **help_layout(epilog))
    parser.add_argument("--version", action="version", version=package_version())
    return parser


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer ``>= minimum`` (else the parser's one-line error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: need an integer >= {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN,
    inf and anything outside are the parser's one-line error, exit 2."""
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    wanted = f"a number {bound}" if math.isinf(high) else f"a number {bound} and <= {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            raise argparse.ArgumentTypeError(f"{text!r}: need {wanted}")
        return value

    parse.__name__ = wanted
    return parse


POSITIVE_INT = int_at_least(1)
COUNT = int_at_least(0)  # zero or more
PROBABILITY = float_in(0.0, 1.0)  # a threshold on a score in [0, 1]
POSITIVE = float_in(0.0, low_open=True)


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--overwrite``: replace an existing ``what`` whole (without it an existing output is
    refused before any work; see :mod:`samhq_jax.atomic`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {what} (whole: written aside, then renamed; without it an existing one is refused)",
    )


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--coordinator HOST:PORT``, ``--num-processes N`` and ``--process-id I`` (a multi-process
    run, ``jax.distributed``; checked by :func:`distributed_flags`) to ``parser``."""
    group = parser.add_argument_group("several processes (one per host; all three flags together)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same in every process")
    group.add_argument("--num-processes", type=POSITIVE_INT, metavar="N", help="how many processes take part")
    group.add_argument("--process-id", type=COUNT, metavar="I", help="this process's index, 0 .. N-1")


def distributed_flags(args: argparse.Namespace) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` from the flags of :func:`add_distributed_flags`,
    or None when none is given; a one-line :class:`~samhq_jax.errors.InputError` when only some
    are, when N < 1, when I is not in ``0 .. N-1`` or the address is not ``HOST:PORT``."""
    values = {"--coordinator": args.coordinator, "--num-processes": args.num_processes, "--process-id": args.process_id}
    missing = [flag for flag, value in values.items() if value is None]
    if len(missing) == len(values):
        return None
    if missing:
        raise InputError(
            f"{' and '.join(missing)} missing: several processes need --coordinator HOST:PORT, --num-processes N "
            "and --process-id I together"
        )
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--coordinator {args.coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
    if args.num_processes < 1:
        raise InputError(f"--num-processes {args.num_processes}: need at least 1")
    if not 0 <= args.process_id < args.num_processes:
        raise InputError(f"--process-id {args.process_id}: need 0 .. {args.num_processes - 1} (--num-processes)")
    return args.coordinator, args.num_processes, args.process_id


def announce_share(prog: str, total: int, mine: int, devices: int, per_device: int, process: tuple[int, int]) -> None:
    """From process 0 of ``process = (index, count)``, and only when the work is split, say how the
    ``total`` images are shared out: ``mine`` to this process, ``per_device`` on each of its
    ``devices`` at a time."""
    index, count = process
    if index == 0 and (count > 1 or devices > 1):
        print(
            f"{prog}: {total} image(s) over {count} process(es); process 0 takes {mine}, {per_device} on each of "
            f"its {devices} device(s) at a time",
            file=sys.stderr,
        )


def progress_label(label: str, process: tuple[int, int]) -> str:
    """A progress bar's ``label``, with ``[process I]`` when ``process = (I, count)`` is one of several."""
    index, count = process
    return label if count == 1 else f"{label} [process {index}]"
