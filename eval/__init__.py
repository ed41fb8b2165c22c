"""Evaluation: mIoU / boundary IoU on the HQ benchmarks (``samhq-eval``), and numerical parity with
the PyTorch references."""
