"""Evaluation, parity and benchmarks, each in its own home.

Evaluation: mIoU / boundary IoU on the HQ benchmarks (``samhq-eval``: :mod:`eval.cli`,
:mod:`eval.protocol`, :mod:`eval.metrics`, :mod:`eval.report`). Numerical parity with the PyTorch
references: :mod:`eval.parity` (``samhq parity``). Speed: :mod:`eval.bench` (``samhq-bench``).
:mod:`eval.reference` builds the PyTorch reference models the last two share.
"""
