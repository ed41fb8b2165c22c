"""``python -m convert.deploy --checkpoint CKPT --output DIR --format onnx|stablehlo``: the same
command as ``samhq export`` (:mod:`samhq_jax.commands.export`), flags and all."""

from __future__ import annotations

import sys

from samhq_jax.cmdkit.args import command_parser, docstring_help
from samhq_jax.cmdkit.guard import run_guarded
from samhq_jax.commands import export

PROG = "python -m convert.deploy"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and export; the exit status."""

    def body() -> int:
        parser = command_parser(PROG, export.__doc__.split("\n")[0].split(": ", 1)[1], docstring_help(export.__doc__))
        export.add_arguments(parser)
        return export.run(parser.parse_args(sys.argv[1:] if argv is None else argv))

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
