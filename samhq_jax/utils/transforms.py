"""``segment_anything_hq.utils.transforms`` under its official path: ``ResizeLongestSide`` as the
official API hands it out (:class:`samhq_jax.official_api.OfficialResizeLongestSide`, the predictor's
``transform``; its ``*_torch`` methods take torch tensors or arrays and return host arrays that answer
``.to(...)`` / ``.cpu()`` / ``.numpy()``).

    from samhq_jax.utils.transforms import ResizeLongestSide
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    boxes = transform.apply_boxes_torch(torch.tensor([[45, 260, 515, 470]]), image.shape[:2])
"""

from samhq_jax.official_api import OfficialResizeLongestSide as ResizeLongestSide

__all__ = ["ResizeLongestSide"]
