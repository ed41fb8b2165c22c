"""The project's exception types, shared by every layer (this module imports nothing of the project).

:class:`InputError` marks a problem with what the user gave: files, prompts, flags, checkpoints,
configurations. It is a ``ValueError``, so Python callers catch it as before; the commands' guard
(:mod:`samhq_jax.cmdkit.guard`) prints it as one line with exit status 2. :class:`RunError` marks a
run that could not finish for a reason that is not a bug (the training loss became NaN, a step of a
pipeline failed): one line, exit status 1. Any other exception escaping a command is our own
failure: exit status 1, "internal error".
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a file, a prompt, a flag, a checkpoint): one line, exit status 2."""


class RunError(RuntimeError):
    """A run that could not finish, not by a bug (a NaN loss, a failed sub-step): one line, exit status 1."""
