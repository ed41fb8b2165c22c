"""The ``samhq serve`` web app (FastAPI): the click-to-segment page and the HTTP API.

Routes:
  ``GET /``                the page (:data:`PAGE`: plain HTML + JavaScript, offline, no build step).
  ``GET /healthz``         ``{"status": "ok", "model": preset-like summary, "cached_images": n}``.
  ``POST /api/segment``    multipart: ``image`` (a file) or ``image_id`` (of an image sent before),
                           ``prompts`` (JSON ``{"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y,
                           label], ...]}``, a line of ``samhq predict --prompts``), optional
                           ``hq_token_only`` and ``multimask`` (booleans) -> ``{"image_id", "masks":
                           [COCO RLE {"size": [H, W], "counts": str}, ...], "scores": [...]}``, one mask
                           per box (one for points alone), as ``samhq predict`` (with ``multimask``
                           the best of SAM's three plus HQ: still one mask per box). At most
                           :data:`MAX_BOXES` boxes, :data:`MAX_POINTS` points and
                           :data:`MAX_MASK_PIXELS` mask pixels (boxes x H x W) a request.
  ``POST /api/everything`` multipart: ``image`` or ``image_id``; optional ``hq_token_only``,
                           ``multimask`` (default true), ``points_per_side``, ``pred_iou_thresh``,
                           ``stability_score_thresh``, ``box_nms_thresh`` -> ``{"image_id", "masks",
                           "scores" (predicted IoU), "records"}`` (the generator's other record fields).

Each image's embedding is computed once, keyed by a hash of its pixels (``image_id``), and kept in a
bounded LRU (``cache_size`` images): a click costs only the decoder, and "segment everything"
starts from the cached embedding. One lock serialises every use
of the model, so concurrent requests never mix images. Bad requests are a 4xx with ``{"error":
message}`` (400 bad input, 404 unknown ``image_id`` or route, 413 body too large, 422 a missing or
mistyped field); our own failures a 500 with ``{"error": message}``, never a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from samhq_jax.amg import SamHQAutomaticMaskGenerator, check_settings
from samhq_jax.amg_ops import coco_encode_rle, mask_to_rle
from samhq_jax.cmdkit.guard import one_line
from samhq_jax.cmdkit.prompts import PROMPTS_EXAMPLE, check_prompts, prompt_arrays
from samhq_jax.errors import InputError
from samhq_jax.image_io import check_image, read_rgb
from samhq_jax.predictor import SamHQPredictor

LOG = logging.getLogger("samhq.serve")
PAGE = "serve_page.html"  # next to this module (package data)
PROMPT_FIELDS = ("boxes", "points", "image")  # "image" (a file name in a prompts file) is ignored here
MAX_POINTS_PER_SIDE = 128  # /api/everything: a grid of at most 128^2 points
MAX_ERROR_CHARS = 500  # an error message is cut to this length
MAX_NAME_CHARS = 100  # an upload's file name is cut to this length in messages
MAX_POINTS = 512  # points in one request (each is a decoder token of every prompt)
MAX_BOXES = 512  # boxes in one request
MAX_MASK_PIXELS = 2**28  # masks x height x width of one answer: each mask is computed at the photo's size
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo: 120 MB decoded; a small PNG can claim far more
MAX_UPLOADS_IN_FLIGHT = 2  # requests holding a decoded upload at once (one at the model, one decoding); the rest wait
# The multipart fields of the routes.
ImageFile = Annotated[UploadFile | None, File(description="the image (or give image_id)")]
ImageId = Annotated[str | None, Form(description="the image_id of an image sent before (or give image)")]
Prompts = Annotated[str, Form(description='JSON {"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, label], ...]}')]
FormBool = Annotated[bool, Form()]
FormInt = Annotated[int, Form()]
FormFloat = Annotated[float, Form()]


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """One encoded image: its pixels ``(H, W, 3)`` uint8, the predictor's embeddings and sizes."""

    image: np.ndarray
    embeddings: Any
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class EmbeddingCache:
    """A bounded LRU of :class:`CachedImage` by ``image_id``; not thread-safe (used under the app's lock)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise InputError(f"the embedding cache needs room for at least 1 image, got {size}")
        self.size = size
        self.entries: collections.OrderedDict[str, CachedImage] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, image_id: str) -> CachedImage | None:
        """The entry of ``image_id`` (now the most recently used), or None."""
        entry = self.entries.get(image_id)
        if entry is not None:
            self.entries.move_to_end(image_id)
        return entry

    def put(self, image_id: str, entry: CachedImage) -> None:
        """Keep ``entry``, dropping the least recently used beyond :attr:`size`."""
        self.entries[image_id] = entry
        self.entries.move_to_end(image_id)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class ApiError(Exception):
    """A request we refuse: ``status`` (4xx) and the message sent as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_key(image: np.ndarray) -> str:
    """``image_id`` of ``(H, W, 3)`` uint8 pixels: a SHA-256 of their shape and bytes (hex, 32 chars)."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:32]


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> np.ndarray:
    """An uploaded file as ``(H, W, 3)`` uint8 RGB, read as ``samhq predict`` reads a file
    (:func:`~samhq_jax.image_io.read_rgb`), refused before decoding when it has over ``max_pixels``
    pixels; :class:`ApiError` 400 naming the upload otherwise."""
    name = Path(filename or "upload").name[:MAX_NAME_CHARS] or "upload"  # only shown in messages
    if not data:
        raise ApiError(400, f"image {name}: the file is empty")
    with tempfile.TemporaryDirectory(prefix="samhq-serve-") as folder:
        path = Path(folder) / "upload"  # not the client's name: it may be "..", too long for a file name, ...
        path.write_bytes(data)
        try:
            check_image(path, "image: ")
            with Image.open(path) as header:
                w, h = header.size
            if w * h > max_pixels:
                raise ApiError(400, f"image {name}: {w}x{h} is over the limit of {max_pixels / 1e6:g} megapixels")
            return read_rgb(path)
        except (InputError, OSError) as err:
            raise ApiError(400, str(err).replace(str(path), name)) from None


def parse_prompts(text: str) -> tuple[list, list]:
    """The ``prompts`` field: a JSON object ``{"boxes": [...], "points": [...]}`` checked as a line of
    a prompts file (:func:`~samhq_jax.cmdkit.prompts.check_prompts`); ``(boxes, points)``."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(
            400, f"prompts: not valid JSON ({err.msg}, column {err.colno}); e.g. {PROMPTS_EXAMPLE}"
        ) from None
    except (RecursionError, ValueError) as err:  # nested too deep; an integer of over 4300 digits
        raise ApiError(
            400, f"prompts: JSON the server does not read ({one_line(err)}); e.g. {PROMPTS_EXAMPLE}"
        ) from None
    if not isinstance(record, dict):
        raise ApiError(400, f"prompts: expected a JSON object; e.g. {PROMPTS_EXAMPLE}")
    unknown = sorted(set(record) - set(PROMPT_FIELDS))
    if unknown:
        raise ApiError(400, f"prompts: unknown key(s) {', '.join(unknown)}; expected boxes and/or points")
    boxes, points = check_prompts(record.get("boxes", []), record.get("points", []), "prompts")
    for name, rows, most in (("boxes", boxes, MAX_BOXES), ("points", points, MAX_POINTS)):
        if len(rows) > most:
            raise ApiError(400, f"prompts: {len(rows)} {name}, over the limit of {most} a request; send them in parts")
    return boxes, points


def check_mask_pixels(boxes: list, size: tuple[int, int]) -> None:
    """Refuse (:class:`ApiError` 400) an answer of more than :data:`MAX_MASK_PIXELS` mask pixels:
    one mask per box (one for points alone) at the image's ``size`` ``(H, W)``."""
    h, w = size
    if max(len(boxes), 1) * h * w > MAX_MASK_PIXELS:
        most = max(MAX_MASK_PIXELS // (h * w), 1)
        raise ApiError(
            400,
            f"prompts: {len(boxes)} boxes on a {w}x{h} image is over the limit of {MAX_MASK_PIXELS / 1e6:g} million "
            f"mask pixels an answer; send at most {most} boxes a request",
        )


def rle_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool masks as COCO compressed RLEs ``{"size": [H, W], "counts": str}``."""
    return [coco_encode_rle(rle) for rle in mask_to_rle(np.asarray(masks, bool))]


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` (cut to :data:`MAX_ERROR_CHARS`) with HTTP ``status``."""
    return JSONResponse({"error": message[:MAX_ERROR_CHARS]}, status_code=status)


class Engine:
    """The model behind the app: the predictor, the embedding cache and the lock serialising both."""

    def __init__(self, predictor: SamHQPredictor, cache_size: int) -> None:
        self.predictor = predictor
        self.cache = EmbeddingCache(cache_size)
        self.lock = threading.Lock()
        self.uploads = threading.BoundedSemaphore(MAX_UPLOADS_IN_FLIGHT)

    def admitted(self, image: UploadFile | None) -> contextlib.AbstractContextManager:
        """Hold this around decoding an upload and answering it: at most :data:`MAX_UPLOADS_IN_FLIGHT`
        decoded photos exist at once (the server's memory is the cache plus these, whatever the
        number of clients); requests naming an ``image_id`` pass straight through."""
        return contextlib.nullcontext() if image is None else self.uploads

    def encoded(self, image: np.ndarray | None, image_id: str | None) -> tuple[str, CachedImage]:
        """The cache entry of ``image`` (encoded now unless cached) or of ``image_id``; call under the lock."""
        if image is not None:
            key = image_key(image)
            entry = self.cache.get(key)
            if entry is None:
                p = self.predictor
                p.set_image(image)
                entry = CachedImage(image, p.embeddings, p.input_size, p.original_size)
                self.cache.put(key, entry)
            return key, entry
        entry = self.cache.get(image_id)
        if entry is None:
            raise ApiError(
                404, f"unknown image_id {image_id!r} (never sent, or dropped from the cache): send the image"
            )
        return image_id, entry

    def restore(self, entry: CachedImage) -> None:
        """Make ``entry`` the predictor's current image (no encoding); call under the lock."""
        p = self.predictor
        p.embeddings, p.input_size, p.original_size = entry.embeddings, entry.input_size, entry.original_size

    def segment(
        self, image: np.ndarray | None, image_id: str | None, prompts: tuple[list, list], multimask: bool, hq: bool
    ) -> dict[str, Any]:
        """``/api/segment``'s answer for checked prompts on ``image`` or a cached ``image_id``."""
        with self.lock:
            key, entry = self.encoded(image, image_id)
            check_mask_pixels(prompts[0], entry.original_size)
            self.restore(entry)
            masks, iou, _ = self.predictor.predict_batch(
                **prompt_arrays(*prompts), multimask_output=multimask, hq_token_only=hq
            )
        return {"image_id": key, "masks": rle_masks(masks[:, 0]), "scores": [float(s) for s in iou[:, 0]]}

    def everything(
        self, image: np.ndarray | None, image_id: str | None, settings: dict[str, Any], multimask: bool, hq: bool
    ) -> dict[str, Any]:
        """``/api/everything``'s answer: the automatic mask generator's records with RLE masks (the
        whole image's embedding taken from the cache, not encoded again)."""
        generator = SamHQAutomaticMaskGenerator(self.predictor, output_mode="coco_rle", progress=False, **settings)
        with self.lock:
            key, entry = self.encoded(image, image_id)
            self.restore(entry)
            records = generator.generate(entry.image, multimask_output=multimask, hq_token_only=hq, image_is_set=True)
        masks = [r.pop("segmentation") for r in records]
        return {"image_id": key, "masks": masks, "scores": [r["predicted_iou"] for r in records], "records": records}


def check_everything_settings(points_per_side: int, thresholds: dict[str, float]) -> dict[str, Any]:
    """The generator settings of an ``/api/everything`` request, checked (:class:`ApiError` 400)."""
    if not 1 <= points_per_side <= MAX_POINTS_PER_SIDE:
        raise ApiError(400, f"points_per_side {points_per_side}: need 1 .. {MAX_POINTS_PER_SIDE}")
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ApiError(400, f"{name} {value}: need a number in [0, 1]")
    check_settings(points_per_side, 64, 0, 1, None, "coco_rle")
    return {"points_per_side": points_per_side, **thresholds}


def guarded(work: Callable[[], dict[str, Any]]) -> JSONResponse:
    """``work()``'s answer as JSON; bad input a 4xx ``{"error"}``, anything else a 500 (logged with
    its traceback on the server, one line in the response)."""
    try:
        return JSONResponse(work())
    except ApiError as err:
        return error_response(err.status, str(err))
    except InputError as err:
        return error_response(400, str(err))
    except Exception as err:
        LOG.exception("request failed")
        return error_response(500, f"internal error: {one_line(err)}")


def read_image_field(image: UploadFile | None, image_id: str | None, max_pixels: int) -> np.ndarray | None:
    """The uploaded image's pixels (None when the request names an ``image_id`` instead)."""
    if (image is None) == (image_id is None):
        raise ApiError(400, "give exactly one of image (a file) or image_id (of an image sent before)")
    if image is None:
        return None
    return decode_upload(image.file.read(), image.filename, max_pixels)


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a 413: by their Content-Length
    before reading, and while reading those that do not declare one (the route's body parsing lets
    the HTTPException through to the error handlers)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"request body over the limit of {max_bytes / 2**20:g} MiB"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await error_response(413, self.message)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the framework raises as ``{"error": message}``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()]
        return error_response(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        LOG.error("request failed: %s", one_line(err))
        return error_response(500, f"internal error: {one_line(err)}")


def page_html() -> str:
    """The page's HTML (:data:`PAGE`, package data)."""
    return resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")


def create_app(
    predictor: SamHQPredictor,
    cache_size: int = 8,
    max_upload_bytes: int = 32 * 2**20,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FastAPI:
    """The app serving ``predictor``: ``cache_size`` image embeddings kept, bodies over
    ``max_upload_bytes`` refused (413), images over ``max_pixels`` pixels refused (400) before
    they are decoded."""
    engine = Engine(predictor, cache_size)
    app = FastAPI(title="samhq serve", description="SAM-HQ in JAX: click-to-segment page and HTTP API")
    app.state.engine = engine
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    page = page_html()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        config = predictor.config
        return {"status": "ok", "img_size": config.img_size, "cached_images": len(engine.cache)}

    @app.post("/api/segment")
    def segment(
        prompts: Prompts,
        image: ImageFile = None,
        image_id: ImageId = None,
        hq_token_only: FormBool = False,
        multimask: FormBool = False,
    ) -> JSONResponse:
        def work() -> dict[str, Any]:
            parsed = parse_prompts(prompts)
            with engine.admitted(image):
                pixels = read_image_field(image, image_id, max_pixels)
                return engine.segment(pixels, image_id, parsed, multimask, hq_token_only)

        return guarded(work)

    @app.post("/api/everything")
    def everything(
        image: ImageFile = None,
        image_id: ImageId = None,
        hq_token_only: FormBool = False,
        multimask: FormBool = True,
        points_per_side: FormInt = 32,
        pred_iou_thresh: FormFloat = 0.88,
        stability_score_thresh: FormFloat = 0.95,
        box_nms_thresh: FormFloat = 0.7,
    ) -> JSONResponse:
        def work() -> dict[str, Any]:
            thresholds = {
                "pred_iou_thresh": pred_iou_thresh,
                "stability_score_thresh": stability_score_thresh,
                "box_nms_thresh": box_nms_thresh,
            }
            settings = check_everything_settings(points_per_side, thresholds)
            with engine.admitted(image):
                pixels = read_image_field(image, image_id, max_pixels)
                return engine.everything(pixels, image_id, settings, multimask, hq_token_only)

        return guarded(work)

    return app
