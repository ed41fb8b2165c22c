"""The official package's module paths (``segment_anything_hq.utils``), so that an official script's
``from segment_anything_hq.utils.transforms import ResizeLongestSide`` or
``from segment_anything_hq.utils.amg import ...`` ports by its prefix alone (``samhq_jax.utils.transforms``,
``samhq_jax.utils.amg``)."""
