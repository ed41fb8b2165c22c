"""The segmentation commands of ``samhq``: ``predict`` (:mod:`~samhq_jax.commands.predict`) and
``everything`` (:mod:`~samhq_jax.commands.everything`). Each registers its sub-parser and runs it;
the model is imported only when a command runs, after its inputs are checked
(:mod:`~samhq_jax.commands.launch`: the processes, this one's share, the checkpoint on its devices)."""
