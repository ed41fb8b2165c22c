"""Benchmarks: ``samhq-bench`` (:mod:`~eval.bench.speed`, also ``python -m eval.bench``), samhq-jax
timed side by side with the PyTorch references; and the measurement primitives every benchmark
shares (:mod:`~eval.bench.env`: timing, XLA's analyses, memory probes, the device's peak, the
environment), the training step's benchmark (:mod:`train.bench`) included."""
