"""The argument parsing every command shares: one-line argument errors (exit 2), ``--version``, and
``--help`` texts that end with the exit notes."""

from __future__ import annotations

import argparse
import importlib.metadata
import textwrap
from typing import Any, NoReturn

from samhq_jax.cmdkit.guard import CACHE_ENV, DEBUG_ENV, EXIT_USAGE

EXIT_NOTES = f"""\
exit status: 0 done; 2 bad arguments or input (a missing or unreadable file, a bad prompt, an
unknown checkpoint format, a bad config.json); 1 a failure while running (e.g. an XLA runtime error
such as out of memory); 130 interrupted. Errors are one line on stderr, "PROG: error: message";
set {DEBUG_ENV}=1 for the Python traceback instead. Compiled models are cached on disk between
runs in ~/.cache/samhq-jax/xla (move it with {CACHE_ENV}=DIR, turn it off with {CACHE_ENV}=0)."""
CHECKPOINT_HELP = (
    "one of our checkpoint folders, an official .pth / .safetensors file, a Hugging Face folder, or a hub "
    "repo id owner/name (from the local hub cache); a path that does not exist is never sent to the hub "
    "unless it has that form"
)


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit 2), never a usage dump or a traceback.

    Shared by every command of the project (``samhq``, ``samhq-convert``, ``samhq-train``,
    ``samhq-eval``).
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
