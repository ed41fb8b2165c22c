"""``samhq serve``'s page in a real browser: Playwright drives Debian's chromium against the app on a
real uvicorn server (seeded tiny_b model). It opens a photo, left-clicks a point, right-clicks a
background point, toggles HQ only and drags a box; after each, the overlay drawn on the canvas, the
downloaded mask PNG and the downloaded COCO RLE JSON must equal the predictor's own answer for the
prompts the page actually sent (recorded from its ``fetch`` calls), and the page must send the image
once and its ``image_id`` after. An EXIF-rotated phone photo must be shown and masked upright, and
the multimask toggle must give the predictor's multimask answer.

The README screenshot comes from the same steps (any checkpoint; default the tiny random model):

    .venv/bin/python -m tests.test_serve_browser --screenshot docs/serve.jpg [--checkpoint CKPT]

chromium: ``$SAMHQ_CHROMIUM`` or ``chromium`` on the PATH (``scripts/setup.sh`` installs Debian's
package where apt is available); Playwright cannot download its own browsers here. Without them the
test fails under CI (``CI`` set) and is skipped elsewhere.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from eval.parity.samples import IMAGES_DIR
from samhq_jax.commands.serve_app import create_app
from samhq_jax.image_io import read_rgb
from samhq_jax.predictor import SamHQPredictor
from tests.conftest import missing_dependency
from tests.serve_support import count_encodes, predictor_masks, running_server, tiny_predictor

PHOTO = IMAGES_DIR / "example8.png"  # 1280x720; the screenshot shows SCREENSHOT_PHOTO
SCREENSHOT_PHOTO = IMAGES_DIR / "dog.jpg"
VIEWPORT = {"width": 1280, "height": 1000}  # the whole canvas is in view (it is 95vw wide at most)
TIMEOUT_MS = 60_000  # one answer (a compile of the decoder for a new prompt shape included)
EXIF_ORIENTATION = 0x0112
LATE_S = 0.5  # how much later than the second click's answer the first click's comes
OVERLAY_SLACK = 1e-4  # a masked pixel equal to its tint ((p + c) >> 1 == p) looks unchanged
# The canvas pixels that differ from the bare photo, bit-packed (row-major), as base64.
CHANGED_PIXELS_JS = """() => {
  const c = document.getElementById("canvas"), w = c.width, h = c.height;
  const shown = c.getContext("2d").getImageData(0, 0, w, h).data;
  const bare = document.createElement("canvas"); bare.width = w; bare.height = h;
  const g = bare.getContext("2d"); g.drawImage(photo, 0, 0);
  const base = g.getImageData(0, 0, w, h).data, bits = new Uint8Array(Math.ceil(w * h / 8));
  for (let i = 0; i < w * h; i++)
    if (shown[4 * i] !== base[4 * i] || shown[4 * i + 1] !== base[4 * i + 1] || shown[4 * i + 2] !== base[4 * i + 2])
      bits[i >> 3] |= 128 >> (i & 7);
  let s = "";
  for (let i = 0; i < bits.length; i += 8192) s += String.fromCharCode.apply(null, bits.subarray(i, i + 8192));
  return btoa(s);
}"""


def chromium_path() -> str | None:
    """The chromium executable to drive: ``$SAMHQ_CHROMIUM`` or ``chromium`` on the PATH."""
    return os.environ.get("SAMHQ_CHROMIUM") or shutil.which("chromium")


def launch(playwright: Any) -> Any:
    """A headless chromium browser (no sandbox: the tests may run as root)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium under Playwright; missing: a failure under CI, a skip elsewhere."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    absent = {"playwright (the test extra)": sync_playwright is None, "chromium": not chromium_path()}
    missing = [what for what, gone in absent.items() if gone]
    if missing:
        what = " and ".join(missing)
        missing_dependency(f"{what} not installed (scripts/setup.sh installs them): the page is not checked")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


# Records the fields of every form the page sends (Playwright gives no body for a request with a
# file in it): ``window.sentForms``, file fields as ``"<file NAME>"``.
RECORD_FORMS_JS = """window.sentForms = [];
const pageFetch = window.fetch;
window.fetch = (url, options) => {
  const sent = { route: String(url) };
  if (options && options.body instanceof FormData)
    for (const [k, v] of options.body.entries()) sent[k] = typeof v === "string" ? v : `<file ${v.name}>`;
  window.sentForms.push(sent);
  return pageFetch(url, options);
};"""


class PageDriver:
    """The page at ``base_url`` in ``browser``: open a photo, click, drag, read the overlay, download."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.context.add_init_script(RECORD_FORMS_JS)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.goto(base_url + "/")

    def open(self, photo: Path) -> None:
        """Open ``photo`` with the file picker; wait until the page shows it."""
        self.page.set_input_files("#file", str(photo))
        self.page.wait_for_function(f"document.getElementById('status').textContent.startsWith({photo.name!r})")

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """The viewport position of the canvas point at fractions ``(fx, fy)`` of its width and height."""
        box = self.page.locator("#canvas").bounding_box()
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    def answered(self, action: Any) -> dict[str, str]:
        """Run ``action()``; wait for the page's /api/segment answer and its redrawn overlay; return
        the fields the page sent."""
        with self.page.expect_response("**/api/segment") as response:
            action()
        assert response.value.status == 200, response.value.text()
        self.page.wait_for_function("document.getElementById('status').textContent.startsWith('score')")
        fields = self.page.evaluate("window.sentForms.pop()")
        assert fields.pop("route") == "/api/segment"
        return fields

    def click(self, fx: float, fy: float, button: str = "left") -> dict[str, str]:
        return self.answered(lambda: self.page.mouse.click(*self.at(fx, fy), button=button))

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> dict[str, str]:
        def action() -> None:
            self.page.mouse.move(*self.at(*start))
            self.page.mouse.down()
            self.page.mouse.move(*self.at(*end), steps=5)
            self.page.mouse.up()

        return self.answered(action)

    def toggle(self, selector: str) -> dict[str, str]:
        return self.answered(lambda: self.page.click(selector))

    def changed_pixels(self) -> np.ndarray:
        """``(H, W)`` bool: where the canvas differs from the bare photo (the overlay, dots, box)."""
        h, w = self.page.evaluate("[canvas.height, canvas.width]")
        bits = np.frombuffer(base64.b64decode(self.page.evaluate(CHANGED_PIXELS_JS)), np.uint8)
        return np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)

    def download(self, selector: str, folder: Path) -> Path:
        with self.page.expect_download() as download:
            self.page.click(selector)
        path = folder / download.value.suggested_filename
        download.value.save_as(path)
        return path

    def close(self) -> None:
        self.context.close()


def prompts_of(fields: dict[str, str]) -> tuple[dict, bool, bool]:
    """``(prompts, hq_token_only, multimask)`` of a request's fields."""
    return json.loads(fields["prompts"]), fields["hq_token_only"] == "true", fields["multimask"] == "true"


def drawn_prompts(shape: tuple[int, int], prompts: dict) -> np.ndarray:
    """``(H, W)`` bool: the pixels near the point dots and box lines the page draws over the mask."""
    h, w = shape
    r = max(4, w / 150) + 3  # the page's dot radius, its stroke and antialiasing
    y, x = np.mgrid[:h, :w]
    near = np.zeros(shape, bool)
    for px, py, _ in prompts.get("points", []):
        near |= (x - px) ** 2 + (y - py) ** 2 <= r**2
    for x0, y0, x1, y1 in prompts.get("boxes", []):
        inside = (x >= x0 - r) & (x <= x1 + r) & (y >= y0 - r) & (y <= y1 + r)
        core = (x > x0 + r) & (x < x1 - r) & (y > y0 + r) & (y < y1 - r)
        near |= inside & ~core
    return near


@pytest.fixture(scope="module")
def served(browser: Any) -> Iterator[tuple[str, list[int], SamHQPredictor, Any]]:
    """``(base URL, encode counter, reference predictor, the app's engine)``: the app on a real
    server, and a second predictor of the same model for the expected answers (not sharing the
    server's state)."""
    server_predictor = tiny_predictor()
    encodes = count_encodes(server_predictor)
    app = create_app(server_predictor, cache_size=4)
    with running_server(app) as url:
        yield url, encodes, tiny_predictor(), app.state.engine


def check_answer(
    driver: PageDriver, reference: SamHQPredictor, image: np.ndarray, fields: dict[str, str], folder: Path, files: str
) -> tuple[dict, np.ndarray]:
    """The page's answer to the request it sent with ``fields`` equals ``reference``'s for ``image``
    (``(H, W, 3)`` uint8, as the server reads the photo): the overlay on the canvas, and the mask PNG
    and COCO RLE JSON downloads named in ``files``. Returns the prompts sent and the mask."""
    prompts, hq, multi = prompts_of(fields)
    masks, scores = predictor_masks(reference, image, prompts, hq=hq, multi=multi)
    assert len(masks) == 1 and masks[0].any() and not masks[0].all()
    drawn = drawn_prompts(image.shape[:2], prompts)
    changed = driver.changed_pixels()
    assert changed.shape == masks[0].shape, f"the canvas is {changed.shape}, the photo {masks[0].shape}"
    wrong = np.count_nonzero((changed & ~drawn) != (masks[0] & ~drawn))
    assert wrong <= OVERLAY_SLACK * changed.size, f"{wrong} overlay pixels differ from the mask"
    if "png" in files:
        png = np.asarray(Image.open(driver.download("#png", folder)).convert("L"))
        np.testing.assert_array_equal(png, masks[0] * np.uint8(255))
    if "rle" in files:
        answer = json.loads(driver.download("#rle", folder).read_text())
        assert answer["image_id"] == driver.page.evaluate("imageId")
        got = np.stack([mask_utils.decode(rle).astype(bool) for rle in answer["masks"]])
        np.testing.assert_array_equal(got, masks)
        np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5)
    return prompts, masks[0]


def labels(prompts: dict) -> tuple[list[int], int]:
    """``(point labels, box count)`` of a request's prompts."""
    return [p[2] for p in prompts.get("points", [])], len(prompts.get("boxes", []))


def test_page_masks_equal_the_predictor(browser, served, tmp_path: Path) -> None:
    url, encodes, reference, _ = served
    image = read_rgb(PHOTO)
    driver = PageDriver(browser, url)
    try:
        driver.open(PHOTO)
        first = driver.click(0.45, 0.6)  # left click: a foreground point, the photo uploaded
        assert first["image"] == f"<file {PHOTO.name}>" and "image_id" not in first
        assert labels(check_answer(driver, reference, image, first, tmp_path, "png")[0]) == ([1], 0)
        assert encodes[0] == 1

        second = driver.click(0.2, 0.25, button="right")  # right click: a background point, by image_id
        assert "image" not in second and len(second["image_id"]) == 32
        assert labels(check_answer(driver, reference, image, second, tmp_path, "rle")[0]) == ([1, 0], 0)

        hq = driver.toggle("#hq")  # HQ only: the same prompts again
        assert prompts_of(hq)[1:] == (True, False) and json.loads(hq["prompts"]) == json.loads(second["prompts"])
        check_answer(driver, reference, image, hq, tmp_path, "")

        boxed = driver.drag((0.3, 0.35), (0.7, 0.9))  # drag: a box, with the points
        assert labels(check_answer(driver, reference, image, boxed, tmp_path, "png,rle")[0]) == ([1, 0], 1)
        assert encodes[0] == 1  # one encoding for all of it
    finally:
        driver.close()


def test_page_shows_an_exif_rotated_photo_as_the_server_reads_it(browser, served, tmp_path: Path) -> None:
    """A phone photo (EXIF orientation 6: stored landscape, shown portrait): the canvas, the clicks
    and the masks are all in the upright frame; then the multimask toggle."""
    url, _, reference, _ = served
    stored = Image.open(PHOTO).reduce(4)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    photo = tmp_path / "phone.jpg"
    stored.save(photo, exif=exif)
    image = read_rgb(photo)
    assert image.shape[:2] == (stored.width, stored.height)  # upright: portrait
    driver = PageDriver(browser, url)
    try:
        driver.open(photo)
        check_answer(driver, reference, image, driver.click(0.5, 0.3), tmp_path, "png")
        multi = driver.toggle("#multi")  # multimask: SAM's best of three plus HQ, still one mask
        assert prompts_of(multi)[1:] == (False, True)
        check_answer(driver, reference, image, multi, tmp_path, "rle")
    finally:
        driver.close()


def test_a_late_answer_does_not_replace_a_later_clicks(browser, served, tmp_path: Path, monkeypatch) -> None:
    """Two quick clicks whose answers cross (the server holds the first until the second is
    answered): the page shows the second click's mask, not the late answer of the first."""
    url, _, reference, engine = served
    second_done = threading.Event()
    order: list[int] = []
    segment = engine.segment

    def crossing(image, image_id, prompts, multimask, hq):
        n = len(prompts[1])
        if n == 1:  # the first click: answered after the second
            second_done.wait(TIMEOUT_MS / 1000)
            time.sleep(LATE_S)
        answer = segment(image, image_id, prompts, multimask, hq)
        order.append(n)
        if n == 2:
            second_done.set()
        return answer

    monkeypatch.setattr(engine, "segment", crossing)
    image = read_rgb(PHOTO)
    driver = PageDriver(browser, url)
    answers: list[Any] = []
    driver.page.on("response", lambda r: answers.append(r) if "/api/segment" in r.url else None)
    try:
        driver.open(PHOTO)
        driver.page.mouse.click(*driver.at(0.45, 0.6))  # not waited for
        second = driver.click(0.2, 0.25, button="right")
        while len(answers) < 2:
            driver.page.wait_for_timeout(50)
        driver.page.wait_for_timeout(1000 * LATE_S)  # the late answer reaches the page's code
        assert order == [2, 1]
        prompts, _ = check_answer(driver, reference, image, second, tmp_path, "rle")
        assert labels(prompts) == ([1, 0], 0)
        assert driver.page.evaluate("document.getElementById('status').textContent").startswith("score")
    finally:
        driver.close()


def test_an_answer_for_the_previous_photo_is_dropped(browser, served, tmp_path: Path, monkeypatch) -> None:
    """A click, then another photo opened before the click's answer comes: the late answer is not
    drawn on the new photo and does not set the image_id the next click sends."""
    url, _, reference, engine = served
    other = tmp_path / "other.png"
    Image.open(SCREENSHOT_PHOTO).reduce(4).save(other)
    first_shape = read_rgb(PHOTO).shape[:2]
    reopened = threading.Event()
    segment = engine.segment

    def held(image, image_id, prompts, multimask, hq):
        if image is not None and image.shape[:2] == first_shape:
            reopened.wait(TIMEOUT_MS / 1000)
        return segment(image, image_id, prompts, multimask, hq)

    monkeypatch.setattr(engine, "segment", held)
    driver = PageDriver(browser, url)
    answers: list[Any] = []
    driver.page.on("response", lambda r: answers.append(r) if "/api/segment" in r.url else None)
    try:
        driver.open(PHOTO)
        driver.page.mouse.click(*driver.at(0.45, 0.6))  # answered only once the other photo is open
        driver.page.wait_for_function("window.sentForms.length === 1")
        driver.open(other)
        reopened.set()
        while not answers:
            driver.page.wait_for_timeout(50)
        driver.page.wait_for_timeout(1000 * LATE_S)  # the late answer reaches the page's code
        assert driver.page.evaluate("[imageId, result]") == [None, None]
        assert not driver.changed_pixels().any()  # nothing drawn over the new photo
        fields = driver.click(0.5, 0.5)
        assert fields["image"] == "<file other.png>" and "image_id" not in fields
        check_answer(driver, reference, read_rgb(other), fields, tmp_path, "png")
    finally:
        driver.close()


def screenshot(path: Path, checkpoint: str | None, photo: Path) -> None:
    """Save a screenshot of the page with ``photo``, a point, a box and the mask overlay to ``path``."""
    from playwright.sync_api import sync_playwright

    predictor = tiny_predictor() if checkpoint is None else SamHQPredictor.from_pretrained(checkpoint)
    with running_server(create_app(predictor)) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        driver = PageDriver(browser, url)
        driver.page.set_viewport_size({"width": 1000, "height": 760})
        driver.open(photo)
        driver.drag((0.25, 0.2), (0.75, 0.97))
        driver.click(0.5, 0.55)
        kind = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
        driver.page.screenshot(path=str(path), type=kind, **({"quality": 85} if kind == "jpeg" else {}))
        driver.close()
        browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot of the samhq serve page (for the README).")
    parser.add_argument("--screenshot", type=Path, required=True, help="output .png or .jpg")
    parser.add_argument("--checkpoint", help="a checkpoint (default: the seeded tiny random model)")
    parser.add_argument("--photo", type=Path, default=SCREENSHOT_PHOTO, help=f"the photo (default {SCREENSHOT_PHOTO})")
    args = parser.parse_args()
    screenshot(args.screenshot, args.checkpoint, args.photo)
    print(f"wrote {args.screenshot} ({args.screenshot.stat().st_size / 1e3:.0f} kB)")
