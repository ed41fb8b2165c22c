"""Deployment formats of the whole model (``samhq export``, ``python -m convert.deploy``).

* :mod:`~convert.deploy.signature`: the encoder and the official-ONNX decoder as JAX functions
  (NCHW in and out, the official names), traced by both exporters;
* :mod:`~convert.deploy.onnx`: ``encoder.onnx`` and ``decoder.onnx`` through jax2onnx, with
  :mod:`~convert.deploy.onnx_postprocess` (the official upscaling to ``orig_im_size``);
* :mod:`~convert.deploy.stablehlo`: ``jax.export`` artifacts for cpu / cuda / rocm / tpu.

The converter (jax2onnx, the ``export`` extra) is imported only when exporting to ONNX.
"""
