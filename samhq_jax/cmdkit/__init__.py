"""The command kit: what every command of the project shares, and no model code.

:mod:`~samhq_jax.cmdkit.args` (the one-line argument parser, ``--version``, the exit notes of
``--help``), :mod:`~samhq_jax.cmdkit.guard` (the top-level error guard, its exit statuses and error
types), :mod:`~samhq_jax.cmdkit.images` (the image suffixes), :mod:`~samhq_jax.cmdkit.overlay`
(masks and prompts drawn over an image) and :mod:`~samhq_jax.cmdkit.prompts` (the JSON-lines
prompts file, the one parser every command reads it with). Nothing here imports the model, the
weights or the features: a command's flags and inputs are checked before any of them is loaded.
"""
