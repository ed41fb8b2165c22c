"""``samhq serve``'s app (FastAPI's test client, a random tiny_b model): every route, its answers
against :class:`SamHQPredictor` and the mask generator, COCO RLE against pycocotools, the embedding
cache, bad requests (a 4xx JSON error, and the next request still served), our own failures (a 500
JSON error, no traceback) and concurrent clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils

from eval.parity.samples import IMAGES_DIR
from samhq_jax.amg import SamHQAutomaticMaskGenerator
from samhq_jax.cli import main
from samhq_jax.cmdkit.prompts import prompt_arrays
from samhq_jax.commands import serve_app
from samhq_jax.commands.serve_app import create_app, page_html
from samhq_jax.errors import InputError
from samhq_jax.image_io import read_rgb
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import missing_dependency
from tests.serve_support import count_encodes, decoded_masks, png_bytes, predictor_masks, tiny_predictor

MAX_UPLOAD = 2**20  # 1 MiB: the oversized-body tests send more
MAX_PIXELS = 100_000  # a larger image is refused
ORIENTATION = 0x0112  # the EXIF orientation tag


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Two small crops of a real photo, ``(H, W, 3)`` uint8 of different sizes."""
    dog = np.asarray(Image.open(IMAGES_DIR / "dog.jpg").convert("RGB").resize((192, 128)))
    return [dog, np.ascontiguousarray(dog[10:110, 30:180])]


@pytest.fixture(scope="module")
def predictor() -> SamHQPredictor:
    return tiny_predictor()


@pytest.fixture(scope="module")
def encodes(predictor: SamHQPredictor) -> list[int]:
    """A counter of the predictor's image encodings (``set_image`` calls)."""
    return count_encodes(predictor)


@pytest.fixture(scope="module")
def client(predictor: SamHQPredictor, encodes: list[int]) -> TestClient:
    with TestClient(create_app(predictor, cache_size=2, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)) as c:
        yield c


def _segment(client: TestClient, image: np.ndarray | None = None, image_id: str | None = None, **fields):
    files = {"image": ("photo.png", png_bytes(image), "image/png")} if image is not None else None
    data = {k: json.dumps(v) if isinstance(v, dict) else str(v).lower() for k, v in fields.items()}
    if image_id is not None:
        data["image_id"] = image_id
    return client.post("/api/segment", files=files, data=data)


def test_healthz_page_and_docs(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<canvas" in page.text and "/api/segment" in page.text and "/api/everything" in page.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/segment", "/api/everything", "/healthz"} <= set(paths)


@pytest.mark.parametrize(
    ("prompts", "hq", "multi"),
    [
        ({"boxes": [[20, 15, 150, 110], [5, 5, 60, 60]], "points": [[80, 60, 1]]}, False, False),
        ({"points": [[80, 60, 1], [10, 10, 0]]}, True, True),
        ({"boxes": [[20, 15, 150, 110], [5, 5, 60, 60], [90, 10, 180, 70]]}, False, True),  # best of 3, per box
    ],
)
def test_segment_equals_predictor(client, predictor, photos, prompts: dict, hq: bool, multi: bool) -> None:
    answer = _segment(client, photos[0], prompts=prompts, hq_token_only=hq, multimask=multi)
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    masks, scores = predictor_masks(predictor, photos[0], prompts, hq, multi)
    assert len(answer["masks"]) == len(masks) == max(len(prompts.get("boxes", [])), 1)
    assert all(rle["size"] == list(photos[0].shape[:2]) for rle in answer["masks"])
    np.testing.assert_array_equal(decoded_masks(answer), masks)
    # the encoding is pycocotools' own, string for string
    coco = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [rle["counts"] for rle in answer["masks"]] == [c["counts"].decode() for c in coco]
    np.testing.assert_allclose(answer["scores"], scores, rtol=1e-6)
    again = _segment(client, image_id=answer["image_id"], prompts=prompts, hq_token_only=hq, multimask=multi)
    assert again.status_code == 200 and again.json() == answer


def test_cache_encodes_each_image_once(client, photos, encodes: list[int]) -> None:
    a, b = photos
    first = _segment(client, a, prompts={"points": [[30, 40, 1]]}).json()
    before = encodes[0]
    assert _segment(client, a, prompts={"points": [[50, 20, 1]]}).status_code == 200  # same pixels: cached
    assert _segment(client, image_id=first["image_id"], prompts={"boxes": [[1, 2, 30, 40]]}).status_code == 200
    assert encodes[0] == before
    second = _segment(client, b, prompts={"points": [[30, 40, 1]]}).json()
    assert encodes[0] == before + 1 and second["image_id"] != first["image_id"]
    # cache_size=2: a third image drops the least recently used one (a)
    third = np.ascontiguousarray(a[::-1])
    assert _segment(client, third, prompts={"points": [[30, 40, 1]]}).status_code == 200
    gone = _segment(client, image_id=first["image_id"], prompts={"points": [[30, 40, 1]]})
    assert gone.status_code == 404 and "send the image" in gone.json()["error"]
    assert _segment(client, image_id=second["image_id"], prompts={"points": [[30, 40, 1]]}).status_code == 200
    assert client.get("/healthz").json()["cached_images"] == 2


def _chunks(size: int):
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536


BIG_PNG = png_bytes(np.zeros((300, 400, 3), np.uint8))
BAD = {
    "not an image": (400, "a.png: not an image", {"files": {"image": ("a.png", b"hello, not a png", "image/png")}}),
    "empty file": (400, "a.png: the file is empty", {"files": {"image": ("a.png", b"", "image/png")}}),
    "odd file name": (400, "not an image", {"files": {"image": ("..", b"hello, not a png", "image/png")}}),
    "long file name": (400, "x" * 100 + ": not an image", {"files": {"image": ("x" * 300, b"hello, not a png")}}),
    "too many pixels": (400, "big.png: 400x300 is over the limit", {"files": {"image": ("big.png", BIG_PNG)}}),
    "bad JSON": (400, "not valid JSON", {"prompts": "{points: [[1, 2, 1]]"}),
    "not an object": (400, "JSON object", {"prompts": "[[1, 2, 1]]"}),
    "JSON nested too deep": (400, "recursion", {"prompts": '{"points": ' + "[" * 100_000 + "]" * 100_000 + "}"}),
    "5000-digit number": (400, "digits", {"prompts": '{"points": [[1' + "0" * 5000 + ", 2, 1]]}"}),
    "NaN coordinate": (400, "finite", {"prompts": '{"points": [[NaN, 2, 1]]}'}),
    "label 7": (400, "label", {"prompts": '{"points": [[1, 2, 7]]}'}),
    "box upside down": (400, "x1 >= x0", {"prompts": '{"boxes": [[50, 2, 10, 9]]}'}),
    "short row": (400, "x, y, label", {"prompts": '{"points": [[1, 2]]}'}),
    "no prompt": (400, "at least one", {"prompts": "{}"}),
    "unknown key": (400, "unknown key", {"prompts": '{"pints": [[1, 2, 1]]}'}),
    "missing prompts": (422, "prompts", {"prompts": None}),
    "bad boolean": (422, "hq_token_only", {"hq_token_only": "maybe"}),
    "no image": (400, "exactly one of image", {"no_image": True}),
    "image and id": (400, "exactly one of image", {"image_id": "abc"}),
    "unknown image_id": (404, "unknown image_id", {"no_image": True, "image_id": "0" * 32}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_4xx_json_and_next_is_served(client, photos, case: str) -> None:
    status, text, spec = BAD[case]
    spec = dict(spec)
    files = spec.pop("files", None) or (
        None if spec.pop("no_image", False) else {"image": ("p.png", png_bytes(photos[1]))}
    )
    data = {k: v for k, v in {"prompts": '{"points": [[10, 10, 1]]}', **spec}.items() if v is not None}
    answer = client.post("/api/segment", files=files, data=data)
    assert answer.status_code == status, answer.text
    assert text in answer.json()["error"] and "Traceback" not in answer.text
    assert _segment(client, photos[1], prompts={"points": [[10, 10, 1]]}).status_code == 200


def test_oversized_bodies_are_413(client, photos) -> None:
    big = {"image": ("big.png", b"\0" * (MAX_UPLOAD + 1), "image/png")}
    answer = client.post("/api/segment", files=big, data={"prompts": '{"points": [[1, 1, 1]]}'})
    assert answer.status_code == 413 and "limit" in answer.json()["error"]
    streamed = client.post(
        "/api/segment", content=_chunks(MAX_UPLOAD), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]  # no Content-Length: counted
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert _segment(client, photos[1], prompts={"points": [[10, 10, 1]]}).status_code == 200


def _upload(tmp_path, name: str, image: Image.Image, **save) -> tuple[dict, np.ndarray]:
    """``image`` saved as the file ``name`` (``save``: PIL options): the upload and how
    ``samhq predict`` reads that file."""
    path = tmp_path / name
    image.save(path, **save)
    return {"image": (name, path.read_bytes())}, read_rgb(path)


def _rotated_jpeg_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown rotated 90 degrees clockwise
    return exif


@pytest.mark.parametrize(
    ("case", "make", "save", "prompts"),
    [
        (
            "16-bit grey PNG",
            lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257),
            {},
            {"points": [[40, 30, 1]]},
        ),
        ("RGBA PNG", lambda a: Image.fromarray(np.dstack([a, a[..., 0]])), {}, {"points": [[40, 30, 1]]}),
        ("EXIF-rotated JPEG", Image.fromarray, {"exif": _rotated_jpeg_exif()}, {"points": [[40, 100, 1]]}),
        ("box outside the image", Image.fromarray, {}, {"boxes": [[-50, -20, 500, 400]]}),
        ("points only, many", Image.fromarray, {}, {"points": [[i * 3, i * 2, i % 2] for i in range(40)]}),
    ],
)
def test_what_labeling_tools_send(client, predictor, photos, tmp_path, case, make, save, prompts) -> None:
    """Uploads and prompts a labeling tool sends get ``samhq predict``'s answer for that file (sent
    under a long file name with a path: it is only shown in messages)."""
    name = "photo.jpg" if "JPEG" in case else "photo.png"
    files, pixels = _upload(tmp_path, name, make(photos[1]), **save)
    files = {"image": ("../../" + "x" * 300 + files["image"][0], files["image"][1])}
    answer = client.post("/api/segment", files=files, data={"prompts": json.dumps(prompts)})
    assert answer.status_code == 200, answer.text
    masks, scores = predictor_masks(predictor, pixels, prompts)
    if "EXIF" in case:
        assert pixels.shape[:2] == photos[1].shape[1::-1]  # upright: height and width swapped
    assert [rle["size"] for rle in answer.json()["masks"]] == [list(pixels.shape[:2])] * len(masks)
    np.testing.assert_array_equal(decoded_masks(answer.json()), masks)
    np.testing.assert_allclose(answer.json()["scores"], scores, rtol=1e-5)


def test_prompt_counts_and_mask_pixels_are_limited(client, photos, monkeypatch) -> None:
    """Too many boxes or points, or masks of too many pixels in all (each at the photo's size), are
    a 400 naming the limit, not a server out of memory."""
    files = {"image": ("p.png", png_bytes(photos[1]))}
    many = {"boxes": [[1, 1, 9, 9]] * (serve_app.MAX_BOXES + 1)}
    answer = client.post("/api/segment", files=files, data={"prompts": json.dumps(many)})
    assert answer.status_code == 400 and f"limit of {serve_app.MAX_BOXES}" in answer.json()["error"]
    many = {"points": [[1, 1, 1]] * (serve_app.MAX_POINTS + 1)}
    answer = client.post("/api/segment", files=files, data={"prompts": json.dumps(many)})
    assert answer.status_code == 400 and f"limit of {serve_app.MAX_POINTS}" in answer.json()["error"]
    h, w = photos[1].shape[:2]
    monkeypatch.setattr(serve_app, "MAX_MASK_PIXELS", 2 * h * w + 1)
    boxes = {"boxes": [[1, 1, 9, 9]] * 3}
    answer = client.post("/api/segment", files=files, data={"prompts": json.dumps(boxes)})
    assert answer.status_code == 400 and "send at most 2 boxes" in answer.json()["error"]
    boxes = {"boxes": [[1, 1, 9, 9]] * 2}
    assert client.post("/api/segment", files=files, data={"prompts": json.dumps(boxes)}).status_code == 200


def test_same_new_image_at_once_is_encoded_once(client, predictor, photos, encodes: list[int]) -> None:
    image = np.ascontiguousarray(photos[0][::-1, ::-1])  # not sent before
    expected, _ = predictor_masks(predictor, image, {"points": [[50, 40, 1]]})
    before = encodes[0]
    answers: list = [None] * 4

    def worker(i: int) -> None:
        answers[i] = _segment(client, image, prompts={"points": [[50, 40, 1]]})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(answers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert encodes[0] == before + 1
    for answer in answers:
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(decoded_masks(answer.json()), expected)


def test_decoded_uploads_in_flight_are_bounded(client, predictor, photos, monkeypatch) -> None:
    """With the model held busy, 5 clients uploading at once: only MAX_UPLOADS_IN_FLIGHT photos are
    decoded (the rest wait undecoded), and every client gets its answer once the model is free."""
    started, release = threading.Semaphore(0), threading.Event()
    decoded = []
    decode, predict = serve_app.decode_upload, predictor.predict_batch

    def counting_decode(*args, **kwargs):
        decoded.append(1)
        return decode(*args, **kwargs)

    def held_predict(*args, **kwargs):
        started.release()
        release.wait(30)
        return predict(*args, **kwargs)

    monkeypatch.setattr(serve_app, "decode_upload", counting_decode)
    monkeypatch.setattr(predictor, "predict_batch", held_predict)
    answers: list = [None] * 5

    def worker(i: int) -> None:
        answers[i] = _segment(client, photos[i % 2], prompts={"points": [[5 + i, 5, 1]]})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(answers))]
    for t in threads:
        t.start()
    assert started.acquire(timeout=60)  # one request is at the model
    time.sleep(1.0)  # give the others every chance to decode
    assert len(decoded) == serve_app.MAX_UPLOADS_IN_FLIGHT
    release.set()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 5 and len(decoded) == 5


def test_our_failure_is_500_json(client, predictor, photos, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("decoder fell over")

    monkeypatch.setattr(predictor, "predict_batch", broken)
    answer = _segment(client, photos[1], prompts={"points": [[10, 10, 1]]})
    assert answer.status_code == 500 and "decoder fell over" in answer.json()["error"]
    assert "Traceback" not in answer.text
    monkeypatch.undo()
    assert _segment(client, photos[1], prompts={"points": [[10, 10, 1]]}).status_code == 200


def test_everything_equals_generator_and_uses_the_cache(client, predictor, photos, encodes: list[int]) -> None:
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}
    image = np.ascontiguousarray(photos[1][:, ::-1])  # not sent before
    before = encodes[0]
    files = {"image": ("p.png", png_bytes(image))}
    answer = client.post("/api/everything", files=files, data={k: str(v) for k, v in settings.items()})
    assert answer.status_code == 200, answer.text
    assert encodes[0] == before + 1  # the image, once: the generator reuses its embedding
    answer = answer.json()
    generator = SamHQAutomaticMaskGenerator(predictor, output_mode="coco_rle", progress=False, **settings)
    records = generator.generate(image)
    assert len(records) > 0 and len(answer["masks"]) == len(records) == len(answer["records"])
    assert answer["masks"] == [r["segmentation"] for r in records]
    np.testing.assert_allclose(answer["scores"], [r["predicted_iou"] for r in records], rtol=1e-6)
    before = encodes[0]
    data = {"image_id": answer["image_id"], "hq_token_only": "true", **{k: str(v) for k, v in settings.items()}}
    again = client.post("/api/everything", data=data)
    assert again.status_code == 200 and encodes[0] == before  # a cached image_id: nothing encoded
    hq = generator.generate(image, hq_token_only=True)
    assert again.json()["masks"] == [r["segmentation"] for r in hq] and hq != records
    bad = client.post("/api/everything", data={"image_id": answer["image_id"], "points_per_side": "0"})
    assert bad.status_code == 400 and "points_per_side" in bad.json()["error"]
    bad = client.post("/api/everything", data={"image_id": answer["image_id"], "pred_iou_thresh": "nan"})
    assert bad.status_code == 400 and "pred_iou_thresh" in bad.json()["error"]


def test_generator_reuses_a_set_image(predictor, photos, encodes: list[int]) -> None:
    """``generate(image, image_is_set=True)`` on the predictor's current image: the same records,
    one encoding fewer; a predictor holding another image (or none) is refused."""
    generator = SamHQAutomaticMaskGenerator(
        predictor, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, progress=False
    )
    records = generator.generate(photos[0])
    predictor.set_image(photos[0])
    before = encodes[0]
    reused = generator.generate(photos[0], image_is_set=True)
    assert encodes[0] == before and len(reused) == len(records) > 0
    for a, b in zip(reused, records, strict=True):
        np.testing.assert_array_equal(a.pop("segmentation"), b.pop("segmentation"))
        assert a == b
    with pytest.raises(InputError, match="holds none"):  # generate resets the predictor after
        generator.generate(photos[0], image_is_set=True)
    predictor.set_image(photos[1])
    with pytest.raises(InputError, match="150x100"):
        generator.generate(photos[0], image_is_set=True)


def test_concurrent_clients_get_their_own_answers(client, predictor, photos) -> None:
    """8 clients at once over 3 images (the cache holds 2: images are dropped and encoded again
    while others are being answered)."""
    photos = [*photos, np.ascontiguousarray(photos[0][:, ::-1])]
    jobs = [
        (i % 3, {"points": [[20 + 7 * i, 15 + 5 * i, 1]]} if i % 3 else {"boxes": [[5, 5, 60 + 9 * i, 50 + 4 * i]]})
        for i in range(8)
    ]
    expected: list = [None] * len(jobs)
    for k, image in enumerate(photos):  # the predictor itself, one image at a time
        predictor.set_image(image)
        for i in (i for i, (kk, _) in enumerate(jobs) if kk == k):
            arrays = prompt_arrays(jobs[i][1].get("boxes", []), jobs[i][1].get("points", []))
            expected[i] = predictor.predict_batch(**arrays, multimask_output=False)[0][:, 0]
    answers: list = [None] * len(jobs)

    def worker(i: int) -> None:
        k, prompts = jobs[i]
        answers[i] = _segment(client, photos[k], prompts=prompts)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(decoded_masks(answer.json()), expected[i], err_msg=f"job {i}")
    assert client.get("/healthz").json()["cached_images"] == 2


def test_page_decodes_coco_rle_as_pycocotools() -> None:
    """The page's JavaScript RLE decoder (run by node) gives pycocotools' masks."""
    node = shutil.which("node")
    if node is None:  # scripts/setup.sh installs Debian's nodejs where it can; CI must not skip this
        missing_dependency("node (Debian's nodejs) is not installed: the page's decoder is not checked")
    html = page_html()
    decoder = html[html.index("function rleCounts") : html.index("const COLORS")]
    rng = np.random.default_rng(0)
    masks = []
    for h, w in [(7, 5), (40, 60), (333, 517)]:
        m = (rng.random((h, w)) < 0.05).astype(np.uint8)
        m[h // 4 : h // 2, w // 3 :] ^= 1
        m[0, 0] = 1
        masks.append(m)
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    rles = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    program = decoder + (
        "const rles = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(rles.map((r) => Array.from(maskOf(r)))));"
    )
    run = subprocess.run([node, "-e", program], input=json.dumps(rles), capture_output=True, text=True, check=True)
    for got, m in zip(json.loads(run.stdout), masks, strict=True):
        np.testing.assert_array_equal(np.asarray(got, np.uint8).reshape(m.shape), m)


@pytest.mark.parametrize(
    ("flags", "text"),
    [(["--port", "70000"], "65535"), (["--cache", "0"], ">= 1"), (["--max-upload-mb", "nan"], "number")],
)
def test_serve_flags_checked_before_loading(flags: list, text: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--checkpoint", "/no/such/checkpoint", *flags])
    assert exit_.value.code == 2 and text in capsys.readouterr().err
