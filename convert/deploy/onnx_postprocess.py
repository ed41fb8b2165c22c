"""The official decoder's last step, ``SamOnnxModel.mask_postprocessing``, as ONNX nodes.

The masks at the original image size have the shape ``orig_im_size`` holds as *data*. A JAX
program's shapes are fixed when it is traced (or symbolic in its inputs' shapes, never in their
values), so no converter from JAX can emit this step; it is the only part of the decoder written
here by hand, 13 nodes appended to the graph jax2onnx wrote, each the ONNX op PyTorch's exporter
gives the official code::

    masks = F.interpolate(low_res_masks, (S, S), mode="bilinear", align_corners=False)
    s = S / max(orig_im_size);  h', w' = floor(s * orig_im_size + 0.5)     # float32, as the official
    masks = masks[..., :h', :w']
    masks = F.interpolate(masks, orig_im_size.to(int64), mode="bilinear", align_corners=False)

``F.interpolate(..., mode="bilinear", align_corners=False)`` is ONNX ``Resize`` with
``mode="linear"`` and ``coordinate_transformation_mode="pytorch_half_pixel"`` (no antialias).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convert.deploy.signature import DECODER_OUTPUTS, MASKS, ORIG_IM_SIZE

PREFIX = "mask_postprocessing/"  # names of the added nodes and tensors
HALF = 0.5  # round half up: the official floor(x + 0.5)


def _name(short: str) -> str:
    return PREFIX + short


def _resize(src: str, sizes: str, out: str) -> onnx.NodeProto:
    """``F.interpolate(src, size, mode="bilinear", align_corners=False)``; ``sizes`` is an int64 (4,) tensor."""
    return helper.make_node(
        "Resize",
        [src, "", "", sizes],
        [out],
        name=_name(f"resize_{out.rsplit('/', 1)[-1]}"),
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )


def add_mask_postprocessing(model: onnx.ModelProto, img_size: int) -> onnx.ModelProto:
    """Append ``orig_im_size`` (the last input, ``(2,)`` float32 ``(H, W)``) and ``masks`` (the first
    output, ``(P, 1, H, W)`` logits) to a decoder whose outputs are :data:`DECODER_OUTPUTS`; the
    outputs become the official ``masks, iou_predictions, low_res_masks``. ``img_size``: S."""
    graph = model.graph
    low_res, iou = DECODER_OUTPUTS
    outputs = {o.name: o for o in graph.output}
    if set(outputs) != set(DECODER_OUTPUTS):
        raise ValueError(f"expected a decoder with outputs {DECODER_OUTPUTS}, got {sorted(outputs)}")
    n = _name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([img_size, img_size], np.int64), n("square")),
            numpy_helper.from_array(np.array(img_size, np.float32), n("side")),
            numpy_helper.from_array(np.array(HALF, np.float32), n("half")),
            numpy_helper.from_array(np.array([0, 0], np.int64), n("starts")),
            numpy_helper.from_array(np.array([2, 3], np.int64), n("axes")),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Shape", [low_res], [n("lead")], name=n("lead"), start=0, end=2),  # (P, 1)
            helper.make_node("Concat", [n("lead"), n("square")], [n("square_sizes")], name=n("square_sizes"), axis=0),
            _resize(low_res, n("square_sizes"), n("square_masks")),
            helper.make_node("ReduceMax", [ORIG_IM_SIZE], [n("longest")], name=n("longest"), keepdims=1),
            helper.make_node("Div", [n("side"), n("longest")], [n("scale")], name=n("scale")),
            helper.make_node("Mul", [n("scale"), ORIG_IM_SIZE], [n("scaled")], name=n("scaled")),
            helper.make_node("Add", [n("scaled"), n("half")], [n("shifted")], name=n("shifted")),
            helper.make_node("Floor", [n("shifted")], [n("rounded")], name=n("rounded")),
            helper.make_node("Cast", [n("rounded")], [n("prepadded")], name=n("prepadded"), to=TensorProto.INT64),
            helper.make_node(
                "Slice", [n("square_masks"), n("starts"), n("prepadded"), n("axes")], [n("cropped")], name=n("crop")
            ),
            helper.make_node("Cast", [ORIG_IM_SIZE], [n("original")], name=n("original"), to=TensorProto.INT64),
            helper.make_node("Concat", [n("lead"), n("original")], [n("sizes")], name=n("sizes"), axis=0),
            _resize(n("cropped"), n("sizes"), MASKS),
        ]
    )
    graph.input.append(helper.make_tensor_value_info(ORIG_IM_SIZE, TensorProto.FLOAT, [2]))
    lead = outputs[low_res].type.tensor_type.shape.dim[:2]
    masks = helper.make_tensor_value_info(
        MASKS, TensorProto.FLOAT, [d.dim_value or d.dim_param for d in lead] + [None, None]
    )
    ordered = [masks, outputs[iou], outputs[low_res]]
    del graph.output[:]
    graph.output.extend(ordered)
    return model
