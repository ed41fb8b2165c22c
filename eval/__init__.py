"""Evaluation: numerical parity with the PyTorch references (mIoU / boundary IoU to follow)."""
