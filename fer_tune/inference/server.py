"""`fer-tune serve`: an HTTP API and a web page that classify the faces in uploaded photos and webcam frames.

`create_app(predictor)` builds the FastAPI app (tests drive it in-process with FastAPI's TestClient);
`serve(predictor, host, port)` binds the port and runs the app under uvicorn until Ctrl-C.

- `POST /predict`: an image as a multipart form's file field `image` (what the page and `curl -F
  image=@photo.jpg` send), or as the raw body (`curl --data-binary @photo.jpg -H 'Content-Type:
  image/jpeg'`). `?detect=false` takes the whole image as one face. The JSON: the image's `width` and
  `height`, and its `faces`, largest first, each with its `box` (x, y, w, h), top `emotion`, its
  `probability`, and the `probabilities` of all seven classes by name.
- `GET /model`: where the model came from, its architecture, input size, classes, and the face detector.
- `GET /`: the page (`static/index.html`, one self-contained file: no asset from elsewhere).

Every error is JSON `{"error": "..."}`: 400 no image sent, or one that is not an image or is truncated;
413 an upload over `max_upload_mb`; 415 a JSON or text body; 422 a bad query value.
"""

import errno
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fer_tune.base import DataError, FerTuneError, cut
from fer_tune.inference.detect import read_image
from fer_tune.inference.predictor import Face, Predictor

if TYPE_CHECKING:
    from fastapi import FastAPI

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (`request: Request`) as
# objects, and fastapi is imported inside `create_app` (`fer-tune predict` need not import it), where a
# string annotation could not be resolved.

MAX_UPLOAD_MB = 20.0  # a phone's largest JPEGs are about 10 MB; a 20 MB upload is a mistake or abuse
IMAGE_FIELD = "image"  # the multipart field the page sends, and the one the docs' curl example names
GRACEFUL_S = 5  # on Ctrl-C, how long requests under way may take to finish before their connections close
# Bodies that are surely not an image: refused with 415 and a hint, not decoded. Any other body (curl's
# --data-binary sends application/x-www-form-urlencoded unless told otherwise) is decoded by its content.
_NOT_IMAGE_TYPES = ("application/json", "text/")
_MIB = 1 << 20


class _TooLarge(Exception):
    """The request's body passed the upload limit (answered 413 by the app's handler)."""


def face_json(face: Face, classes: tuple[str, ...]) -> dict[str, Any]:
    """One face as `POST /predict` returns it.

    Args:
        face: a classified face.
        classes: the class names, in the order of `face.probs`.

    Returns:
        `{"box": {x, y, w, h}, "emotion", "probability", "probabilities": {class: p}}`, probabilities to 4
        decimals (as predict's CSV).
    """
    b = face.box
    return {
        "box": {"x": b.x, "y": b.y, "w": b.w, "h": b.h},
        "emotion": classes[int(face.probs.argmax())],
        "probability": round(face.probability, 4),
        "probabilities": {c: round(float(p), 4) for c, p in zip(classes, face.probs, strict=True)},
    }


def _limited(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """An ASGI `receive` that raises `_TooLarge` once the body read passes `limit` bytes.

    A body without Content-Length (chunked) or one that lies about it is cut off here, as it arrives: the
    rest is never read into memory.
    """
    seen = 0

    async def receive_limited() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return receive_limited


def create_app(predictor: Predictor, *, max_upload_mb: float = MAX_UPLOAD_MB) -> "FastAPI":
    """The FastAPI app of `fer-tune serve`: `POST /predict`, `GET /model` and the page at `/`.

    Args:
        predictor: the loaded model (its detector finds the faces).
        max_upload_mb: the largest upload accepted, MiB; a larger one is answered 413.

    Returns:
        The app, to run under any ASGI server (`serve` runs it under uvicorn).

    Raises:
        ValueError: `max_upload_mb` is not positive.
        DataError: the predictor's face detector cannot be built (it is built here, not on a first request).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    limit = int(max_upload_mb * _MIB)
    page = resources.files("fer_tune.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    # One model call at a time. The detector and the model already spread one call over every core (OpenCV's
    # parallel_for_, torch's intra-op threads), so two calls at once on a 2-core machine only make each
    # slower (oversubscribed threads); and neither OpenCV's CascadeClassifier nor a cv2.dnn Net is
    # documented as safe to call from two threads at once (each keeps the image it scans in the object).
    # Requests wait for the lock in the threadpool, so the event loop still accepts connections, reads
    # uploads and answers /model meanwhile; decoding (Pillow, which releases the GIL) stays outside it.
    model_lock = threading.Lock()
    _ = predictor.detector  # built now, once: not by two first requests at once; a broken one fails here

    def classify(data: bytes, name: str, detect: bool) -> dict[str, Any]:
        rgb = read_image(data, name)
        with model_lock:
            faces = predictor.faces(rgb, detect=detect)
        h, w = rgb.shape[:2]
        return {"width": w, "height": h, "faces": [face_json(f, predictor.classes) for f in faces]}

    # No /docs or /redoc: FastAPI's pages load Swagger's scripts from a CDN, and this server works offline.
    app = FastAPI(title="fer-tune", docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:])  # ("query", "detect") -> "detect"
        return JSONResponse({"error": cut(f"{where}: {first.get('msg', 'invalid')}")}, 422)

    @app.exception_handler(_TooLarge)
    async def too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        # Connection: close, since the rest of the body is never read: the connection cannot be reused.
        msg = f"the upload is over the {max_upload_mb:g} MB limit (fer-tune serve --max-upload-mb)"
        return JSONResponse({"error": msg}, 413, headers={"Connection": "close"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # Still JSON for the page; Starlette raises it again after this, so uvicorn logs its traceback.
        return JSONResponse({"error": cut(f"internal error: {type(exc).__name__}: {exc}")}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/model")
    async def model() -> dict[str, Any]:
        meta = predictor.meta
        return {
            "name": Path(predictor.source).name,
            "source": predictor.source,
            "arch": meta.get("arch"),
            "members": list(meta.get("members", [])),
            "input_size": meta.get("input_size"),
            "classes": list(predictor.classes),
            # Read each time: a caller may swap them.
            "detector": predictor.detector.name,
            "detector_settings": predictor.detector.settings(),
            "upright": predictor.upright,
            "device": str(predictor.device),
            "max_upload_mb": max_upload_mb,
        }

    async def form_image(request: Request) -> tuple[bytes, str]:
        async with request.form(max_files=8, max_fields=32) as form:
            upload = form.get(IMAGE_FIELD)
            if isinstance(upload, str):
                raise HTTPException(
                    400,
                    f"the form's field {IMAGE_FIELD} is text, not a file: curl -F "
                    f"{IMAGE_FIELD}=@photo.jpg (with the @)",
                )
            if upload is None:  # another field name: take the first file (curl -F file=@photo.jpg)
                upload = next((v for _, v in form.multi_items() if isinstance(v, UploadFile)), None)
            if upload is None:
                raise HTTPException(
                    400,
                    f"no image in the form: send it as the file field {IMAGE_FIELD} "
                    f"(curl -F {IMAGE_FIELD}=@photo.jpg ...)",
                )
            return await upload.read(), cut(upload.filename or "upload", 80)

    @app.post("/predict")
    async def predict(request: Request, detect: bool = True) -> dict[str, Any]:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            # Refused before the body is read; uvicorn then sends no `100 Continue`, so a client that
            # waits for one (curl, for bodies over 1 MB) never uploads it.
            raise _TooLarge
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = Request(request.scope, _limited(request.receive, limit))
        if kind == "multipart/form-data":
            data, name = await form_image(body)
        elif kind.startswith(_NOT_IMAGE_TYPES):
            raise HTTPException(
                415,
                f"the body is {kind}, not an image: send the image's bytes (curl "
                "--data-binary @photo.jpg -H 'Content-Type: image/jpeg') or a form's file "
                f"field {IMAGE_FIELD} (curl -F {IMAGE_FIELD}=@photo.jpg)",
            )
        else:
            data, name = b"".join([chunk async for chunk in body.stream()]), "upload"
        if not data:
            raise HTTPException(
                400, f"no image in the request: POST one as the form field {IMAGE_FIELD} or as the body"
            )
        try:
            return await run_in_threadpool(classify, data, name, detect)
        except DataError as e:
            raise HTTPException(400, cut(str(e))) from None
        except ValueError as e:
            if detect:
                raise  # a bug, not the upload: answered 500 and logged with its traceback
            raise HTTPException(400, cut(f"{name}: {e}")) from None  # too small to be one face

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a one-line error saying why not.

    Bound here, not by uvicorn, whose bind failure logs and calls `sys.exit(1)`.

    Args:
        host: a name or address of this machine (`127.0.0.1`, `0.0.0.0` for every interface, `::1`).
        port: the port; 0 for any free one.

    Returns:
        The socket, listening.

    Raises:
        FerTuneError: the host is not this machine's, or the port is taken or not allowed.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as e:
        raise FerTuneError(f"--host {host}: not a host name or address ({e})") from None
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a restarted server can bind while its old connections linger in TIME_WAIT. (On Linux
    # this does not let two servers listen on one port: that is still EADDRINUSE below.)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            msg = f"--port {port}: {host}:{port} is already in use (by another server?); give another --port"
        elif e.errno == errno.EACCES:
            msg = f"--port {port}: permission denied (ports below 1024 need root); give another --port"
        elif e.errno == errno.EADDRNOTAVAIL:
            msg = f"--host {host}: not an address of this machine"
        else:
            msg = f"--host {host} --port {port}: cannot listen there ({e.strerror or e})"
        raise FerTuneError(msg) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The http URL a listening socket answers at (`http://127.0.0.1:8000/`; IPv6 in brackets).

    Args:
        sock: a bound TCP socket.

    Returns:
        The URL, ending in `/`.
    """
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, minus its start-up chatter (the URL line says it); one access line per request."""
    from uvicorn.config import LOGGING_CONFIG

    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in LOGGING_CONFIG.items()}
    config["handlers"] = {k: dict(v) for k, v in config["handlers"].items()}
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout holds only the URL line
    config["loggers"] = {k: dict(v) for k, v in config["loggers"].items()}
    config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    return config


def serve(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    stdout: IO[str] | None = None,
) -> int:
    """Serve `create_app(predictor)` on host:port until Ctrl-C; prints the URL first.

    Ctrl-C (SIGINT) lets requests under way finish (`GRACEFUL_S` at most) and returns 0; SIGTERM does the
    same, then ends the process by that signal, as uvicorn does (status 143).

    Args:
        predictor: the loaded model.
        host: the address to listen on; `127.0.0.1` answers this machine only, `0.0.0.0` every network.
        port: the port; 0 for any free one (the URL printed says which).
        max_upload_mb: the largest upload accepted, MiB.
        stdout: where the URL line goes; None for `sys.stdout`.

    Returns:
        The exit status: 0 once stopped.

    Raises:
        FerTuneError: the port cannot be listened on (in use, not allowed, not this machine's host).
    """
    import uvicorn

    stdout = stdout or sys.stdout
    app = create_app(predictor, max_upload_mb=max_upload_mb)
    sock = bind(host, port)
    # lifespan off: the app has no start-up or shutdown step, and a second Ctrl-C (uvicorn's forced exit)
    # would otherwise cancel the lifespan task, which uvicorn logs as a traceback.
    config = uvicorn.Config(
        app, log_config=_log_config(), timeout_graceful_shutdown=GRACEFUL_S, lifespan="off"
    )
    url = url_of(sock)
    print(
        f"fer-tune serve: {predictor.source} at {url} (POST images to {url}predict; Ctrl-C stops)",
        file=stdout,
        flush=True,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on SIGINT, then raises it again
        pass
    finally:
        sock.close()
    print("fer-tune serve: stopped", file=stdout, flush=True)
    return 0
