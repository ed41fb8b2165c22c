"""Segment a photo with the two ONNX files of ``samhq export --format onnx`` and onnxruntime alone.

Needs only NumPy, Pillow and onnxruntime (no JAX, no PyTorch). The steps are the official
``SamPredictor``'s: resize the longest side to S (PIL bilinear, sides ``int(side * s + 0.5)``),
normalise with SAM's pixel mean / std, zero-pad to S x S, encode once; move the prompts into the
resized frame (``ResizeLongestSide.apply_boxes`` / ``apply_coords``), decode, threshold at 0::

    python examples/onnx_segment.py --encoder onnx/encoder.onnx --decoder onnx/decoder.onnx \\
        --image dog.jpg --box 100 200 900 1200 --output dog_mask.png
    python examples/onnx_segment.py ... --point 500 600 1 --point 200 100 0 --output mask.png

Writes ``--output``: an 8-bit PNG at the photo's size, 255 on the object, 0 elsewhere; prints the
predicted IoU.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # SAM's, RGB on the 0-255 scale
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
BOX_LABELS = (2.0, 3.0)  # the official decoder's labels of a box's top-left and bottom-right corners
PAD_POINT_LABEL = -1.0  # "not a point": the official predictor appends one when no box is given
MASK_THRESHOLD = 0.0


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(image: np.ndarray, long_side: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, S, S)`` float32: resized, normalised, zero-padded (``Sam.preprocess``)."""
    h, w = resized_shape(*image.shape[:2], long_side)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32)
    padded = np.zeros((long_side, long_side, 3), np.float32)
    padded[:h, :w] = (resized - PIXEL_MEAN) / PIXEL_STD
    return padded.transpose(2, 0, 1)[None]


def apply_coords(coords: np.ndarray, original: tuple[int, int], long_side: int) -> np.ndarray:
    """``ResizeLongestSide.apply_coords``: ``(..., 2)`` xy in the photo -> the resized frame (in float64)."""
    h, w = original
    new_h, new_w = resized_shape(h, w, long_side)
    out = np.array(coords, np.float64)
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def prompt_arrays(
    boxes: list[list[float]], points: list[list[float]], original: tuple[int, int], long_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's ``point_coords (1, N, 2)`` and ``point_labels (1, N)``: the points, then the box
    as two corners labelled 2 and 3 (``apply_boxes``), or a padding point when there is no box."""
    coords = [p[:2] for p in points]
    labels = [p[2] for p in points]
    if boxes:
        coords += np.asarray(boxes[0], np.float64).reshape(2, 2).tolist()
        labels += BOX_LABELS
    else:
        coords.append([0.0, 0.0])
        labels.append(PAD_POINT_LABEL)
    moved = apply_coords(np.array(coords, np.float64), original, long_side)  # the padding point stays at (0, 0)
    return moved[None].astype(np.float32), np.array(labels, np.float32)[None]


def segment(
    encoder: ort.InferenceSession,
    decoder: ort.InferenceSession,
    image: np.ndarray,
    boxes: list[list[float]],
    points: list[list[float]],
) -> tuple[np.ndarray, float]:
    """``(H, W)`` bool mask and the predicted IoU for one photo and one prompt."""
    long_side = encoder.get_inputs()[0].shape[-1]
    original = image.shape[:2]
    embeddings, interm = encoder.run(None, {encoder.get_inputs()[0].name: preprocess(image, long_side)})
    coords, labels = prompt_arrays(boxes, points, original, long_side)
    low_res_side = decoder.get_inputs()[4].shape[-1]
    masks, iou, _ = decoder.run(
        None,
        {
            "image_embeddings": embeddings,
            "interm_embeddings": interm,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, low_res_side, low_res_side), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(original, np.float32),
        },
    )
    return masks[0, 0] > MASK_THRESHOLD, float(iou[0, 0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", required=True, help="encoder.onnx")
    parser.add_argument("--decoder", required=True, help="decoder.onnx")
    parser.add_argument("--image", required=True, help="the photo")
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="a box, photo pixels")
    parser.add_argument(
        "--point", nargs=3, type=float, action="append", default=[], metavar=("X", "Y", "LABEL"), help="1 fg, 0 bg"
    )
    parser.add_argument("--output", required=True, help="the mask PNG to write")
    args = parser.parse_args(argv)
    if args.box is None and not args.point:
        parser.error("give a --box, one or more --point, or both")
    if args.box is not None and (args.box[2] < args.box[0] or args.box[3] < args.box[1]):
        parser.error(f"--box {args.box}: need X1 >= X0 and Y1 >= Y0")
    if any(p[2] not in (0.0, 1.0) for p in args.point):
        parser.error("--point LABEL must be 1 (foreground) or 0 (background)")
    providers = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(args.encoder, providers=providers)
    decoder = ort.InferenceSession(args.decoder, providers=providers)
    image = np.asarray(ImageOps.exif_transpose(Image.open(args.image)).convert("RGB"))
    mask, iou = segment(encoder, decoder, image, [args.box] if args.box else [], args.point)
    Image.fromarray(mask.astype(np.uint8) * 255).save(args.output)
    print(f"{args.output}: {int(mask.sum())} of {mask.size} pixels, predicted IoU {iou:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
