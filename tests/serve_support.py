"""Shared pieces of the ``samhq serve`` tests (tests/test_serve*.py): the seeded tiny model, images
as uploads, the predictor's own answers, an encoder-call counter and a real uvicorn server."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pycocotools import mask as mask_utils

from samhq_jax.cmdkit.prompts import prompt_arrays
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import official_model_and_params

SERVER_START_S = 30.0  # a uvicorn server that is not up by then failed


def tiny_predictor(preset: str = "tiny_b") -> SamHQPredictor:
    """A predictor of the seeded, fully random ``preset`` model (the official model's conversion)."""
    _, _, config, params = official_model_and_params(preset)
    return SamHQPredictor(config, params)


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    """``image`` (a NumPy array, PIL ``mode`` when given) as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(image, mode).save(buf, format="PNG")
    return buf.getvalue()


def decoded_masks(answer: dict) -> np.ndarray:
    """The ``masks`` (COCO RLE) of an API answer as ``(N, H, W)`` bool, decoded by pycocotools."""
    return np.stack([mask_utils.decode(rle).astype(bool) for rle in answer["masks"]])


def predictor_masks(
    predictor: SamHQPredictor, image: np.ndarray, prompts: dict, hq: bool = False, multi: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (P, H, W) bool, scores (P,))`` of the predictor itself for one ``prompts`` object
    (``{"boxes": [...], "points": [...]}``) on ``image`` (``(H, W, 3)`` uint8), as ``samhq predict``
    computes them."""
    predictor.set_image(image)
    arrays = prompt_arrays(prompts.get("boxes", []), prompts.get("points", []))
    masks, iou, _ = predictor.predict_batch(**arrays, multimask_output=multi, hq_token_only=hq)
    return masks[:, 0], iou[:, 0]


def count_encodes(predictor: SamHQPredictor) -> list[int]:
    """Wrap ``predictor.set_image`` (every image encoding of the app and of the mask generator goes
    through it); returns ``[count]``, updated in place."""
    count = [0]
    original = predictor.set_image

    def counted(image: np.ndarray, image_format: str = "RGB") -> None:
        count[0] += 1
        original(image, image_format)

    predictor.set_image = counted
    return count


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL
    (``http://127.0.0.1:PORT``) and stops the server after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_S)
        sock.close()
