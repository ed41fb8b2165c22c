"""The project's exception types, shared by every layer (this module imports nothing of the project).

:class:`InputError` marks a problem with what the user gave: files, prompts, flags, checkpoints,
configurations. It is a ``ValueError``, so Python callers catch it as before; the commands' guard
(:mod:`samhq_jax.cmdkit.guard`) prints it as one line with exit status 2. Any other exception
escaping a command is our own failure: exit status 1, "internal error".
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a file, a prompt, a flag, a checkpoint): one line, exit status 2."""
