"""Fine-tuning SAM-HQ: the official HQ-SAM recipe in optax (``samhq-train``, ``python -m train``).

SAM stays frozen; the trainable parameters are chosen by path (:mod:`train.trainable`). Pieces:
:mod:`train.data` (grain input pipeline), :mod:`train.augment` and :mod:`train.prompts` (the
official augmentation and prompt sampling), :mod:`train.loss` (the official point-sampled loss),
:mod:`train.step` (the jitted, sharded step), :mod:`train.loop` (checkpoints, resume, logging,
validation), :mod:`train.cli`.
"""
