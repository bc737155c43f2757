"""`fer-tune serve` and `fer_tune.inference.server`: the API in-process, a real server process, and its page
in a real browser.

The model is a tiny untrained one (what a face is called does not matter here: where it is, the JSON, the
errors and the server's life do). The photo is scikit-image's astronaut. One server process serves the
whole module (it takes a few seconds to start); the browser is Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import one_line
from PIL import Image
from test_predict import ASTRONAUT_FACE, TINY, save_untrained

from fer_tune.cli import main
from fer_tune.data import EMOTIONS
from fer_tune.inference import create_app, untrained

httpx = pytest.importorskip("httpx")
skdata = pytest.importorskip("skimage.data")
# Starlette 1.x deprecates its TestClient's httpx in favour of httpx2; the calls are the same.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

LIMIT_MB = 1  # the servers here refuse uploads over 1 MiB: an oversize upload is then quick to send
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
    # A fake camera (a moving test pattern) that getUserMedia gets without asking: the webcam test.
    *("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"),
]


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg(skdata.astronaut())


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.pt as training writes it, with random weights."""
    return save_untrained(TINY, tmp_path_factory.mktemp("run")) / "model.pt"


def near_astronaut(box: dict[str, int]) -> bool:
    """The box's centre within a fifth of a face of the astronaut's, its side within 0.6-1.4 of hers."""
    x, y, w, h = ASTRONAUT_FACE
    dx = abs(box["x"] + box["w"] / 2 - (x + w / 2))
    dy = abs(box["y"] + box["h"] / 2 - (y + h / 2))
    return dx <= 0.2 * w and dy <= 0.2 * h and abs(box["w"] / w - 1) <= 0.4


def check_photo_answer(body: dict[str, Any]) -> None:
    assert (body["width"], body["height"]) == (512, 512)
    assert len(body["faces"]) == 1, body
    face = body["faces"][0]
    assert near_astronaut(face["box"]), face["box"]
    assert list(face["probabilities"]) == list(EMOTIONS)
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
    assert face["probability"] == face["probabilities"][face["emotion"]]


# -- the app in-process ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(untrained(TINY), max_upload_mb=LIMIT_MB)) as c:
        yield c


def test_a_photo_as_a_form_field_or_as_the_body_finds_the_face(client, photo):
    by_form = client.post("/predict", files={"image": ("astronaut.jpg", photo, "image/jpeg")})
    assert by_form.status_code == 200
    check_photo_answer(by_form.json())
    by_body = client.post("/predict", content=photo, headers={"Content-Type": "image/jpeg"})
    assert by_body.json() == by_form.json()
    # curl's --data-binary without -H sends application/x-www-form-urlencoded: still decoded by its content
    assert client.post("/predict", content=photo).json() == by_form.json()
    # another field name: the form's first file
    assert client.post("/predict", files={"file": ("a.jpg", photo)}).json() == by_form.json()


def test_detect_false_takes_the_whole_image_as_one_face(client, photo):
    body = client.post("/predict?detect=false", content=photo).json()
    assert [f["box"] for f in body["faces"]] == [{"x": 0, "y": 0, "w": 512, "h": 512}]
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "PNG")
    r = client.post("/predict?detect=false", content=tiny.getvalue())
    assert r.status_code == 400 and "too small" in r.json()["error"]
    r = client.post("/predict?detect=maybe", content=photo)
    assert r.status_code == 422 and r.json()["error"].startswith("detect:")


def test_a_photo_without_a_face_gives_an_empty_list(client):
    r = client.post("/predict", content=jpeg(np.full((240, 320, 3), 128, np.uint8)))
    assert r.status_code == 200 and r.json() == {"width": 320, "height": 240, "faces": []}


@pytest.mark.parametrize(
    ("send", "status", "says"),
    [
        ({"content": b"not an image at all" * 50}, 400, "upload: cannot read image (not an image format"),
        ({"files": {"image": ("x.jpg", b"GIF89a garbage")}}, 400, "x.jpg: cannot read image"),
        ("truncated", 400, "half.jpg: cannot read image (image file is truncated"),
        ({"content": b"\xff" * (LIMIT_MB << 20) + b"!"}, 413, f"over the {LIMIT_MB} MB limit"),
        ({"files": {"image": ("big.jpg", b"\xff" * (LIMIT_MB << 20))}}, 413, "over the"),
        ({}, 400, "no image in the request"),
        ({"files": {"image": ("empty.jpg", b"")}}, 400, "no image in the request"),
        ({"data": {"note": "x"}, "files": {"x": (None, "y")}}, 400, "no image in the form"),
        ({"files": {"image": (None, "photo.jpg")}}, 400, "is text, not a file"),
        ({"json": {"image": "..."}}, 415, "not an image"),
    ],
    ids=[
        "garbage",
        "garbage-form",
        "truncated",
        "oversize",
        "oversize-form",
        "empty",
        "empty-file",
        "no-file",
        "text-field",
        "json",
    ],
)
def test_bad_uploads_are_json_errors_and_the_app_keeps_serving(client, photo, send, status, says):
    if send == "truncated":
        send = {"files": {"image": ("half.jpg", photo[: len(photo) // 2], "image/jpeg")}}
    r = client.post("/predict", **send)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert says in r.json()["error"], r.json()
    assert client.post("/predict", content=photo).status_code == 200


def test_an_oversize_chunked_body_is_cut_off_as_it_arrives(client):
    sent = []

    def body() -> Iterator[bytes]:
        for _ in range(4 * LIMIT_MB * 16):  # 4x the limit, 64 KiB at a time, without a Content-Length
            sent.append(1)
            yield b"\0" * (64 << 10)

    r = client.post("/predict", content=body())
    assert r.status_code == 413 and "over the" in r.json()["error"]


def test_model_describes_the_model_and_the_detector(client):
    info = client.get("/model").json()
    assert info["classes"] == list(EMOTIONS)
    assert info["input_size"] == 44 and info["arch"] == "cnn" and info["source"] == "untrained cnn"
    assert info["detector"] == "ssd" and info["detector_settings"]["confidence"] == 0.3
    assert info["upright"] is True and info["max_upload_mb"] == LIMIT_MB
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_the_page_is_one_file_with_nothing_from_elsewhere(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for hook in ('id="file"', 'id="camera"', 'id="view"', 'id="faces"', 'id="error"'):
        assert hook in r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)  # no CDN script, style or font


def test_create_app_refuses_a_nonpositive_limit():
    with pytest.raises(ValueError, match="max_upload_mb"):
        create_app(untrained(TINY), max_upload_mb=0)


# -- a real server process ---------------------------------------------------------------------------------


class Server:
    """`python -m fer_tune.cli serve ...` in a subprocess, its stdout and stderr read by threads."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "fer_tune.cli", "serve", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False), daemon=True).start()

    def _read(self, stream: Any, into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self.lines.put(line)

    def url(self, timeout: float = 60) -> str:
        """The URL the server printed, once it answers there."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=0.2)
                break
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    time.sleep(0.2)  # the reader thread catches up with the last lines
                    pytest.fail(f"no URL printed (exit {self.proc.returncode}): {''.join(self.err)}")
        found = re.search(r"at (http://\S+/) ", line)
        assert found, line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(found[1] + "model", timeout=5).raise_for_status()
                return found[1]
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"{found[1]} does not answer: {''.join(self.err)}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(model_pt: Path) -> Iterator[tuple[Server, str]]:
    """One real server for the module, on a free port (`--port 0`), with a 1 MiB upload limit."""
    s = Server(str(model_pt), "--port", "0", "--max-upload-mb", str(LIMIT_MB), "--device", "cpu")
    try:
        yield s, s.url()
    finally:
        s.stop()


def test_the_real_server_finds_the_face_and_prints_its_url(server, photo):
    s, url = server
    assert url.startswith("http://127.0.0.1:")  # only this machine unless --host says otherwise
    assert s.out[0].startswith(f"fer-tune serve: {s.proc.args[4]} at {url} ")
    r = httpx.post(url + "predict", files={"image": ("astronaut.jpg", photo, "image/jpeg")}, timeout=30)
    assert r.status_code == 200
    check_photo_answer(r.json())
    assert httpx.get(url + "model").json()["source"] == s.proc.args[4]


def test_the_real_server_refuses_bad_uploads_and_keeps_serving(server, photo):
    _, url = server
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("predict", content=b"garbage" * 100, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400 and "cannot read image" in r.json()["error"]
        r = c.post("predict", files={"image": ("half.jpg", photo[: len(photo) // 2])})
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        r = c.post("predict", files={"image": ("big.jpg", b"\xff" * (2 * LIMIT_MB << 20))})
        assert r.status_code == 413 and "over the" in r.json()["error"]
        r = c.post("predict", data={"note": "no file"})
        assert r.status_code == 400 and "error" in r.json()
        assert c.post("predict", content=photo).status_code == 200


def test_an_upload_announced_too_large_is_refused_before_its_body_is_sent(server):
    # Headers only: a 10 GB Content-Length and no body. Answered at once, without waiting for the body
    # (a server that read it first would wait here until the timeout).
    host, port = re.match(r"http://(.+):(\d+)/", server[1]).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "image/jpeg")
    conn.putheader("Content-Length", str(10**10))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and b"over the" in r.read()
    conn.close()


def test_the_real_server_answers_concurrent_requests(server, photo):
    _, url = server
    with httpx.Client(base_url=url, timeout=60) as c:
        expected = c.post("predict", content=photo).json()

        def one(_: int) -> tuple[int, Any]:
            r = httpx.post(url + "predict", files={"image": ("a.jpg", photo)}, timeout=60)
            return r.status_code, r.json()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, range(12)))
    assert all(status == 200 for status, _ in answers), answers
    assert all(body == expected for _, body in answers)  # the lock keeps calls apart: same answers


def test_a_port_in_use_is_one_line_and_exit_2(server, model_pt):
    port = server[1].rsplit(":", 1)[1].strip("/")
    run = subprocess.run(
        [sys.executable, "-m", "fer_tune.cli", "serve", str(model_pt), "--port", port],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [
        f"fer-tune: error: --port {port}: 127.0.0.1:{port} is already in use (by another server?); give "
        "another --port"
    ]
    assert run.stdout == ""


def test_a_bad_model_fails_at_once_before_the_server_starts(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 2
    assert one_line(capsys).startswith("fer-tune: error: ")
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port: must be >= 0 and <= 65535" in one_line(capsys)


# -- the page in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server[1])
    page.wait_for_function("document.getElementById('model').textContent.includes('detector')")
    yield page
    context.close()


# The colour of a canvas pixel, as [r, g, b, a].
PIXEL = "(canvas, [x, y]) => Array.from(canvas.getContext('2d').getImageData(x, y, 1, 1).data)"


def upload_photo(page: Any, photo: bytes) -> list[str]:
    page.set_input_files(
        "#file", files=[{"name": "astronaut.jpg", "mimeType": "image/jpeg", "buffer": photo}]
    )
    page.wait_for_selector("#faces li")
    return page.locator("#faces li").all_inner_texts()


def test_the_page_draws_and_lists_the_faces_of_a_photo(page, photo):
    items = upload_photo(page, photo)
    assert len(items) == 1, items
    found = re.fullmatch(r"(\w+) (\d\.\d\d) at x=(-?\d+) y=(-?\d+) (\d+)x(\d+)", items[0])
    assert found and found[1] in EMOTIONS, items
    box = dict(zip("xywh", map(int, found.groups()[2:]), strict=True))
    assert near_astronaut(box)
    assert page.get_attribute("#view", "data-faces") == "1"
    assert page.eval_on_selector("#view", "canvas => [canvas.width, canvas.height]") == [512, 512]
    # The box is drawn in pure green over the photo: on its left edge, not inside the face.
    r, g, b, _ = page.eval_on_selector("#view", PIXEL, [box["x"], box["y"] + box["h"] // 2])
    assert g > 200 and r < 80 and b < 80, (r, g, b)
    r, g, b, _ = page.eval_on_selector("#view", PIXEL, [box["x"] + box["w"] // 2, box["y"] + box["h"] // 2])
    assert not (g > 200 and r < 80 and b < 80)
    assert page.inner_text("#error") == ""
    assert "1 face in 512x512 px" in page.inner_text("#status")


def test_the_page_shows_a_rejected_upload_and_keeps_working(page, photo):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "notes.txt: cannot read image" in page.inner_text("#error")
    assert page.locator("#faces li").count() == 0
    assert len(upload_photo(page, photo)) == 1
    assert page.inner_text("#error") == ""


def test_the_page_posts_webcam_frames_while_it_is_on(page):
    page.click("#camera")  # Chromium's fake camera: a 640x480 test pattern (a detector may see a face in it)
    page.wait_for_function("Number(document.getElementById('view').dataset.frames || 0) >= 2")
    assert page.inner_text("#error") == ""
    assert page.inner_text("#camera") == "Stop webcam"
    assert re.match(r"(no face|\d+ faces?) in 640x480 px, \d+ ms", page.inner_text("#status"))
    assert page.eval_on_selector("#view", "canvas => [canvas.width, canvas.height]") == [640, 480]
    page.click("#camera")
    assert page.inner_text("#camera") == "Start webcam"


# Last: it stops the module's server.
def test_ctrl_c_stops_the_server_cleanly(server, photo):
    s, url = server
    assert httpx.post(url + "predict", content=photo, timeout=30).status_code == 200
    assert s.stop(signal.SIGINT) == 0
    time.sleep(0.2)  # the reader threads catch up with the last lines
    assert s.out[-1] == "fer-tune serve: stopped\n"
    assert "Traceback" not in "".join(s.err), "".join(s.err)
    assert any('"POST /predict HTTP/1.1" 200' in line for line in s.err)  # one access line per request
