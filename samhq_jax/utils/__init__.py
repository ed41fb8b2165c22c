"""The official package's module paths (``segment_anything_hq.utils``), so that an official script's
``from segment_anything_hq.utils.transforms import ResizeLongestSide`` ports by its prefix alone
(``samhq_jax.utils.transforms``)."""
