"""``samhq serve``: a click-to-segment page and an HTTP API for one checkpoint (FastAPI + uvicorn).

The flags are checked before the checkpoint is loaded; FastAPI and uvicorn are imported only when
serving (``pip install 'samhq-jax[serve]'``). The app itself is :mod:`samhq_jax.commands.serve_app`;
:data:`SERVE_HELP` is the ``--help`` text (routes, examples).
"""

from __future__ import annotations

import argparse
from typing import Any

from samhq_jax.cmdkit.args import CHECKPOINT_HELP, POSITIVE, POSITIVE_INT, help_layout, int_at_least
from samhq_jax.cmdkit.guard import doing

MAX_PORT = 65535
SERVE_HELP = """\
routes (OpenAPI docs at /docs):
  GET  /                the page: open a photo, left click a foreground point, right click a
                        background point, drag a box; HQ-only / multimask toggles, segment
                        everything, download the mask (PNG) and the result (COCO RLE JSON)
  GET  /healthz         {"status": "ok", ...}
  POST /api/segment     multipart: image (a file) or image_id (of an image sent before), prompts
                        (JSON {"boxes": [[x0, y0, x1, y1], ...], "points": [[x, y, label], ...]}, a
                        line of samhq predict --prompts), optional hq_token_only, multimask
                        -> {"image_id", "masks": [COCO RLE {"size": [H, W], "counts": str}], "scores"}
  POST /api/everything  multipart: image or image_id; optional hq_token_only, multimask,
                        points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh
                        -> {"image_id", "masks", "scores", "records"}
  Each image is encoded once (keyed by its pixels; the last --cache images kept), so a click costs
  only the decoder. With multimask each mask is the best of SAM's three plus HQ (one mask per box).
  Bad requests get a 4xx {"error": message}, among them too many boxes or points, or masks of too
  many pixels in all (boxes x H x W), with the limit.

examples:
  samhq serve --checkpoint sam_hq_vit_b.pth            # then open http://127.0.0.1:8000/
  curl -F image=@dog.jpg -F 'prompts={"points": [[500, 600, 1]]}' http://127.0.0.1:8000/api/segment"""


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1 .. 65535."""
    port = int_at_least(1)(text)
    if port > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: need a port number <= {MAX_PORT}")
    return port


def add_parser(sub: Any) -> None:
    """Register ``serve`` on the ``samhq`` subparsers ``sub``."""
    p = sub.add_parser(
        "serve",
        help="a click-to-segment page and an HTTP API for a checkpoint",
        description="Serve a checkpoint: a page to segment one's own photos by clicking, and an HTTP API "
        "for annotation tools.",
        **help_layout(SERVE_HELP),
    )
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    p.add_argument("--cache", type=POSITIVE_INT, default=8, help="image embeddings kept (default 8)")
    p.add_argument("--max-upload-mb", type=POSITIVE, default=32.0, help="largest request body in MiB (default 32)")
    p.add_argument(
        "--max-megapixels", type=POSITIVE, default=40.0, help="largest image, refused before decoding (default 40)"
    )


def run(args: argparse.Namespace) -> int:
    """``samhq serve``: load the checkpoint and serve it until interrupted."""
    try:
        import uvicorn

        from samhq_jax.commands.serve_app import create_app
    except ImportError as err:
        raise ImportError(f"samhq serve needs FastAPI and uvicorn ({err}): pip install 'samhq-jax[serve]'") from err
    from samhq_jax.predictor import SamHQPredictor

    with doing(f"loading the checkpoint {args.checkpoint}"):
        predictor = SamHQPredictor.from_pretrained(args.checkpoint)
    app = create_app(
        predictor,
        cache_size=args.cache,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
    )
    print(f"samhq serve: http://{args.host}:{args.port}/ (API docs at /docs); Ctrl+C stops")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
