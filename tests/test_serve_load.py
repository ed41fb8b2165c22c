"""``samhq serve`` under load: 8 concurrent clients on a real uvicorn server (seeded tiny_b model),
five photos in three sizes uploaded as RGB, RGBA and grey PNGs (more images than the cache holds,
so entries are dropped while clients still use them: a 404, and the image sent again), clients
sending the same image at once, four kinds of prompts (points, several boxes, multimask, HQ only)
and ``image_id`` reuse, a bad request after every second good one. Every answer must equal the
predictor's own, computed one at a time. Memory is bounded by the cache: it never holds more than
its size and every dropped entry is freed (weak references); a second round on new images of the
same sizes must not grow the process's memory (VmRSS) beyond allocator noise (a leak of over
1 MB a request would)."""

from __future__ import annotations

import gc
import io
import json
import threading
import time
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from eval.parity.samples import IMAGES_DIR
from samhq_jax.commands.serve_app import create_app, image_key
from samhq_jax.image_io import read_rgb
from tests.serve_support import decoded_masks, png_bytes, predictor_masks, running_server, tiny_predictor

CLIENTS = 8
CACHE = 3  # fewer than the 5 images of a round
STEPS = 5  # requests of each client per round, a bad one after every second
RSS_SLACK_MB = 64.0  # growth allowed over the second round's 56 requests (measured: +11 and +20 MB)
POINT = '{"points": [[1, 2, 1]]}'
# Requests a client sends between good ones: (status, part of the error, fields, file).
BAD = [
    (400, "not valid JSON", {"prompts": "{points: [[1, 2, 1]]"}, ("a.png", b"\x89PNG garbage")),
    (400, "not an image", {"prompts": '{"points": [[1, 2, 1]]}'}, ("a.png", b"hello, not a png")),
    (400, "finite", {"prompts": '{"points": [[NaN, 2, 1]]}'}, None),
    (400, "label", {"prompts": '{"points": [[1, 2, 7]]}'}, None),
    (404, "unknown image_id", {"prompts": '{"points": [[1, 2, 1]]}', "image_id": "f" * 32}, None),
    (422, "prompts", {}, None),
]


def round_images(round_: int) -> list[tuple[np.ndarray, str]]:
    """Five photos in three sizes (landscape, portrait, 4:3) as ``(pixels (H, W, 3) uint8, PIL mode
    to upload them in: RGB, RGBA with an opaque alpha, L grey)``; round 2's are round 1's mirrored
    (new pixels, the same sizes: no new compilation)."""
    dog = np.asarray(Image.fromarray(read_rgb(IMAGES_DIR / "dog.jpg")).resize((1024, 683)))
    seven = read_rgb(IMAGES_DIR / "example7.png")
    grey = np.repeat(np.asarray(Image.fromarray(seven[::-1]).convert("L"))[..., None], 3, axis=2)
    images = [
        (dog, "RGB"),
        (np.ascontiguousarray(dog[::2, ::2].transpose(1, 0, 2)), "RGB"),  # portrait
        (seven, "RGBA"),
        (np.ascontiguousarray(dog[::-1]), "RGB"),
        (grey, "L"),
    ]
    if round_ == 2:
        images = [(np.ascontiguousarray(image[:, ::-1]), mode) for image, mode in images]
    return images


def image_of(client: int, step: int) -> int:
    """The image a client's step uses: two steps on one image (the second by its ``image_id``),
    then the next; the last step returns to the first image (by then often dropped: a 404 and the
    image sent again)."""
    return (client + (0 if step == STEPS - 1 else step // 2)) % 5


def job_prompts(client: int, step: int, shape: tuple[int, int]) -> tuple[dict, bool, bool]:
    """``(prompts, hq_token_only, multimask)`` of one request: one of four kinds (one point; a
    foreground and a background point, HQ only; two boxes and a point, multimask; one box, HQ only
    and multimask) at positions varied by client and step."""
    h, w = shape
    k = client * STEPS + step
    x, y = (0.2 + 0.6 * ((k * 37) % 100) / 100) * w, (0.2 + 0.6 * ((k * 61) % 100) / 100) * h
    box = [round(x * 0.5, 1), round(y * 0.5, 1), round(min(x * 1.3, w), 1), round(min(y * 1.3, h), 1)]
    kind = (client + step) % 4
    if kind == 0:
        return {"points": [[round(x, 1), round(y, 1), 1]]}, False, False
    if kind == 1:
        return {"points": [[round(x, 1), round(y, 1), 1], [w * 0.1, h * 0.1, 0]]}, True, False
    if kind == 2:
        return {"boxes": [box, [0, 0, w / 3, h / 2]], "points": [[round(x, 1), round(y, 1), 1]]}, False, True
    return {"boxes": [box]}, True, True


def rss_mb() -> float:
    """This process's resident memory (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def upload(image: np.ndarray, mode: str) -> bytes:
    """``image`` as a PNG file in PIL ``mode`` (RGBA: an opaque alpha channel added; L: grey)."""
    return png_bytes(np.asarray(Image.fromarray(image).convert(mode)))


@pytest.fixture(scope="module")
def reference():
    return tiny_predictor()


def run_round(url: str, round_: int, reference, engine) -> dict:
    """One round: every client's requests, checked; returns counts (answers, 404 re-sends, bad)."""
    images = round_images(round_)
    files = [upload(image, mode) for image, mode in images]
    pixels = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files]  # what the server reads
    plan = {
        (c, s): (image_of(c, s), *job_prompts(c, s, pixels[image_of(c, s)].shape[:2]))
        for c in range(CLIENTS)
        for s in range(STEPS)
    }
    expected = {}
    for index in range(len(images)):  # the predictor itself, one image at a time
        for key, (i, prompts, hq, multi) in plan.items():
            if i == index:
                expected[key] = predictor_masks(reference, pixels[index], prompts, hq=hq, multi=multi)
    counts = {"answers": 0, "resent": 0, "bad": 0, "cache_max": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        ids: dict[int, str] = {}
        with httpx.Client(base_url=url, timeout=120) as http:
            for s in range(STEPS):
                i, prompts, hq, multi = plan[c, s]
                data = {
                    "prompts": json.dumps(prompts),
                    "hq_token_only": str(hq).lower(),
                    "multimask": str(multi).lower(),
                }
                if i in ids:
                    answer = http.post("/api/segment", data={**data, "image_id": ids[i]})
                    if answer.status_code == 404:  # dropped from the cache: send the image again
                        with lock:
                            counts["resent"] += 1
                        answer = None
                else:
                    answer = None
                if answer is None:
                    answer = http.post("/api/segment", data=data, files={"image": ("p.png", io.BytesIO(files[i]))})
                with lock:
                    counts["cache_max"] = max(counts["cache_max"], len(engine.cache))
                if answer.status_code != 200:
                    failures.append(f"client {c} step {s}: {answer.status_code} {answer.text}")
                    continue
                body = answer.json()
                ids[i] = body["image_id"]
                if body["image_id"] != image_key(pixels[i]):
                    failures.append(f"client {c} step {s}: image_id {body['image_id']} is not image {i}'s")
                masks, scores = expected[c, s]
                got = decoded_masks(body)
                if got.shape != masks.shape or not np.array_equal(got, masks):
                    failures.append(f"client {c} step {s}: masks differ from the predictor's")
                elif not np.allclose(body["scores"], scores, rtol=1e-5, atol=1e-6):
                    failures.append(f"client {c} step {s}: scores {body['scores']} != {scores.tolist()}")
                with lock:
                    counts["answers"] += 1
                if s % 2:  # a bad request, then the next good one must be served
                    status, text, fields, file = BAD[(c + s) % len(BAD)]
                    extra = {"files": {"image": file}} if file else {}
                    if file is None and "image_id" not in fields:
                        fields = {**fields, "image_id": ids[i]}
                    bad = http.post("/api/segment", data=fields, **extra)
                    error = bad.json().get("error", "") if bad.headers["content-type"] == "application/json" else ""
                    if bad.status_code != status or text not in error:
                        failures.append(f"client {c} step {s}: bad request got {bad.status_code} {bad.text}")
                    with lock:
                        counts["bad"] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, "\n".join(failures[:10])
    return counts


def test_eight_clients_mixed_images_and_prompts(reference) -> None:
    predictor = tiny_predictor()
    app = create_app(predictor, cache_size=CACHE)
    engine = app.state.engine
    entries = []  # a weak reference to every cache entry ever made
    put = engine.cache.put

    def recorded(image_id: str, entry) -> None:
        entries.append(weakref.ref(entry))
        put(image_id, entry)

    engine.cache.put = recorded
    with running_server(app) as url:
        start = time.perf_counter()
        first = run_round(url, 1, reference, engine)
        gc.collect()
        before = rss_mb()
        second = run_round(url, 2, reference, engine)
        gc.collect()
        grown = rss_mb() - before
        elapsed = time.perf_counter() - start
        health = httpx.get(url + "/healthz").json()
        # round 1's images were all dropped by round 2's (5 > CACHE): their image_id is a 404
        gone = httpx.post(url + "/api/segment", data={"image_id": image_key(round_images(1)[0][0]), "prompts": POINT})
        assert gone.status_code == 404 and "send the image" in gone.json()["error"]
    print(f"load: rounds {first} {second}; RSS +{grown:.1f} MB over round 2; {elapsed:.1f} s")
    for counts in (first, second):
        assert counts["answers"] == CLIENTS * STEPS and counts["bad"] == CLIENTS * (STEPS // 2)
        assert counts["cache_max"] <= CACHE
    assert health["cached_images"] <= CACHE and len(engine.cache) <= CACHE
    assert grown < RSS_SLACK_MB, f"RSS grew {grown:.1f} MB over the second round"
    alive = [entry for entry in (ref() for ref in entries) if entry is not None]
    assert len(entries) >= 2 * len(round_images(1)) and len(alive) <= CACHE  # dropped entries are freed
