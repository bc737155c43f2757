"""Benchmark `fer-tune serve`: requests/s of a real server process under N concurrent clients.

    python benchmarks/bench_serve.py [MODEL] [--clients 1 4] [--seconds 20] [-- SERVE FLAGS...]

Starts `python -m fer_tune.cli serve MODEL --port 0` (any free port; flags after `--` are passed on), waits
until it answers, then for each client count N runs N threads, each with its own httpx client posting the
same photo as a multipart upload (what the page sends) in a loop for `--seconds`, after one warm-up request
each. The photo is scikit-image's astronaut (one face) resized to 640x480 and saved as a JPEG (as
benchmarks/bench_predict.py's photos). Printed per N: requests/s (completed requests over the wall time),
the median and 90th-percentile latency, and the 1-minute load average before and after (the clients run on
the same cores as the server: their share is small beside detection, but not nothing). MODEL defaults to the
model distilled from the CPU reference (results/cpu-amx/distilled).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from machine import cpu_name  # benchmarks/machine.py: scripts run from this folder

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "results" / "cpu-amx" / "distilled"


def photo() -> bytes:
    """The astronaut, 640x480, as a JPEG (quality 90)."""
    import cv2
    from PIL import Image
    from skimage.data import astronaut

    buf = io.BytesIO()
    Image.fromarray(cv2.resize(astronaut(), (640, 480), interpolation=cv2.INTER_AREA)).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def start(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """The server process and its URL, once it answers."""
    cmd = [sys.executable, "-m", "fer_tune.cli", "serve", model, "--port", "0", *extra]
    # stderr (an access line per request) to a file: a pipe nobody reads would fill and stall the server.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (open as long as the server runs)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"at (http://\S+/) ", line)
    if not found:
        proc.wait(30)
        log.seek(0)
        sys.exit(f"the server did not start (exit {proc.returncode}): {line.strip()} {log.read()[-2000:]}")
    url = found[1]
    for _ in range(600):
        try:
            httpx.get(url + "model", timeout=5).raise_for_status()
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"{url} does not answer")


def run(url: str, image: bytes, clients: int, seconds: float) -> dict[str, float]:
    """`clients` threads posting `image` for `seconds`: completed requests/s and latencies (s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            c.post("predict", files={"image": ("photo.jpg", image, "image/jpeg")}).raise_for_status()
            start_line.wait()
            while time.perf_counter() < stop_at[0]:
                t = time.perf_counter()
                r = c.post("predict", files={"image": ("photo.jpg", image, "image/jpeg")})
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600  # set for real once every client is warm
    start_line.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        print(f"  {len(errors)} failed requests, e.g. {errors[0]}")
    q = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else [latencies[0]] * 9
    return {
        "rate": len(latencies) / wall,
        "n": len(latencies),
        "median": statistics.median(latencies),
        "p90": q[8],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="flags after -- go to fer-tune serve (-- --device cpu)"
    )
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL), help="what `fer-tune serve` loads")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent clients (1 4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per client count (20)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: more `fer-tune serve` flags
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    image = photo()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs; model: {args.model}; photo: 640x480 JPEG, "
        f"{len(image) / 1024:.0f} KiB; {args.seconds:g} s per client count"
    )
    proc, url = start(args.model, extra)
    try:
        first = httpx.post(url + "predict", files={"image": ("photo.jpg", image)}, timeout=120).json()
        faces = ", ".join(f"{f['emotion']} {f['probability']:.2f} at {f['box']}" for f in first["faces"])
        detector = httpx.get(url + "model").json()["detector"]
        print(f"server: {url}, detector {detector}; the photo: {faces or 'no face'}")
        print("| clients | requests/s | median latency | p90 latency | requests | load avg before -> after |")
        print("|---|---|---|---|---|---|")
        for n in args.clients:
            before = os.getloadavg()[0]
            r = run(url, image, n, args.seconds)
            after = os.getloadavg()[0]
            print(
                f"| {n} | {r['rate']:.1f} | {r['median'] * 1000:.0f} ms | {r['p90'] * 1000:.0f} ms | "
                f"{r['n']:.0f} | {before:.2f} -> {after:.2f} |",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


if __name__ == "__main__":
    main()
