"""Hostile images through the whole serving path of a real application: the ingress checks
each image's header, the vision pool decodes it. Every refusal is a 400 naming the image
part, decompression bombs are refused from their header before any pixel is decoded, and
the vision replica keeps serving after each of them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.conftest import HostileApp
from tests.reliability.hostile_inputs import data_url, image_message, photo_png, png_bomb, png_declared_only

pytestmark = [pytest.mark.ray, pytest.mark.redis]

PART = "messages[0].content[0].image_url"


@pytest.fixture(scope="module")
def client(hostile_app: HostileApp):
    with httpx.Client(base_url=hostile_app.base_url, headers=hostile_app.auth, timeout=60) as client:
        yield client


def chat(client: httpx.Client, app: HostileApp, messages: list[dict]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post("/chat/completions", json={"model": app.model, "messages": messages, "max_tokens": 2, "temperature": 0})
    return response, time.monotonic() - started


def assert_refused(response: httpx.Response, *, code: str | None, param: str | None, says: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert code is None or error["code"] == code, error
    assert says in error["message"], error
    return error


def assert_vision_serves(client: httpx.Client, app: HostileApp, seed: int) -> None:
    """A fresh image (not in the embedding cache) still goes through the vision pool."""
    response, _ = chat(client, app, image_message(data_url(photo_png(seed=seed))))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > app.spec.model.max_model_len // 16


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (lambda: png_bomb(7000, 7000), "7000x7000 pixels; the limit is 40000000"),
        (lambda: png_bomb(20000, 20000), "decompression bomb"),
        (lambda: png_declared_only(100_000, 100_000), "decompression bomb"),
    ],
    ids=["49M pixels in 6 KB", "400M pixels in 48 KB", "10G pixels in 60 bytes"],
)
def test_decompression_bombs_are_refused_from_the_header(client, hostile_app, image, says):
    bomb = image()
    response, elapsed = chat(client, hostile_app, image_message(data_url(bomb)))
    assert_refused(response, code="invalid_image", param=PART, says=says)
    assert elapsed < 10.0, f"{len(bomb)} bytes took {elapsed:.1f} s to refuse"
    assert_vision_serves(client, hostile_app, seed=len(bomb))


def test_a_truncated_png_is_refused_by_the_vision_pool(client, hostile_app):
    whole = photo_png(seed=1)
    response, _ = chat(client, hostile_app, image_message(data_url(whole[: len(whole) // 2])))
    # The header is intact, so the ingress passes it on; decoding the pixels fails in the pool,
    # which names the image by its place in the request's images.
    assert_refused(response, code=None, param="images[0]", says="truncated")
    assert_vision_serves(client, hostile_app, seed=2)


def test_an_extreme_aspect_ratio_is_refused_before_conversion(client, hostile_app):
    sliver = png_bomb(40_000_000, 1)  # within the pixel limit, but resizing it would not be
    response, _ = chat(client, hostile_app, image_message(data_url(sliver)))
    assert_refused(response, code=None, param="images[0]", says="aspect ratio too extreme")
    assert_vision_serves(client, hostile_app, seed=3)


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        (data_url(b"just some text", mime="text/plain"), "invalid_image", "is not an image"),
        (data_url(b"\x00\x01 not a picture at all"), "invalid_image", "cannot be decoded"),
        ("data:image/png;base64,@@@not-base64@@@", "invalid_image", "base64"),
        ("data:image/png,rawbytes", "invalid_image", "base64-encoded"),
        ("https://example.com/cat.png", "remote_image_urls_disabled", "remote image URLs are disabled"),
        ("file:///etc/passwd", "invalid_image", "expected a data:image"),
    ],
    ids=["text data URL", "garbage bytes", "bad base64", "not base64", "remote URL", "file URL"],
)
def test_urls_that_are_not_images(client, hostile_app, url, code, says):
    response, _ = chat(client, hostile_app, image_message(url))
    assert_refused(response, code=code, param=PART, says=says)


def test_an_unsupported_format_is_named(client, hostile_app):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    response, _ = chat(client, hostile_app, image_message(data_url(buf.getvalue(), mime="image/tiff")))
    assert_refused(response, code="invalid_image", param=PART, says="'TIFF' is not supported")


def test_too_many_images_and_oversized_data_urls(client, hostile_app):
    from router.limits import DEFAULT_LIMITS

    small = data_url(photo_png(size=8, seed=4))
    response, _ = chat(client, hostile_app, image_message(*[small] * (DEFAULT_LIMITS.max_images + 1)))
    assert_refused(response, code="too_many_images", param="messages", says=f"the limit is {DEFAULT_LIMITS.max_images}")
    huge = "data:image/png;base64," + "A" * DEFAULT_LIMITS.max_image_url_chars
    response, elapsed = chat(client, hostile_app, image_message(huge))
    assert_refused(response, code="image_too_large", param=PART, says="characters; the limit is")
    assert elapsed < 10.0


def test_the_vision_pool_refuses_a_bomb_sent_to_it_directly(hostile_app):
    """The pool checks for itself: another caller of its handle gets a `ValueError`, and the
    replica encodes the next image."""
    from ray import serve

    from workers.vision.preprocess import ImageTooLargeError

    vision = serve.get_deployment_handle("vision-local", app_name="hostile-test")
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        vision.encode.remote([png_bomb(20000, 20000)]).result(timeout_s=60)
    [embeds] = vision.encode.remote([photo_png(seed=5)]).result(timeout_s=60)
    assert embeds is not None
