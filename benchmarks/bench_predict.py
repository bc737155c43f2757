"""Benchmark `fer-tune predict`'s three targets on the CPU, and print them as a markdown table.

    python benchmarks/bench_predict.py [MODEL] [--threads 2] [--seconds 5] [--data FER2013]

1. classification of pre-cut 48x48 faces in batches of 256 (`Predictor.predict_crops`): faces/s, through
   PyTorch and through ONNX Runtime;
2. detection + classification of 640x480 JPEG photos, decoding included (`read_image`, `Predictor.faces`):
   photos/s; the photo is scikit-image's astronaut (one face) resized to 640x480, or, without scikit-image,
   three FER2013-sized faces of random pixels on gray (detection then finds none: a lower bound on work);
3. single-face latency (batch 1, median) of the model through ONNX Runtime and through PyTorch eager, the
   graph alone (both fp32) and the whole `predict_crops` (normalise, crop, softmax; PyTorch in the precision
   `predict_logits` picks: bf16 autocast on CPUs with AMX), measured in the same run.

With `--data FER2013`, also ONNX Runtime's static int8 quantization of the same graph (`fer-tune export-model
--quantize int8`, calibrated on 512 Training faces): its faces/s, and the PublicTest accuracy of PyTorch
(fp32, as `fer-tune evaluate` scores), the float ONNX graph and the int8 one, so speed is never bought blind.

MODEL defaults to results/cpu-reference/final when present, else an untrained model of
configs/cpu_small.yaml (speed does not depend on the weights); the first line says which was used, and the
load average before and after is printed (other jobs on shared cores slow every figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fer_tune.data import load_fer2013
from fer_tune.device import Precision
from fer_tune.evaluate import predict_logits
from fer_tune.export_model import calibration_faces, export, quantize_int8
from fer_tune.faces import read_image
from fer_tune.predict import OnnxModule, Predictor, load, onnx_session, untrained

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "results" / "cpu-reference" / "final"
FALLBACK_CONFIG = ROOT / "configs" / "cpu_small.yaml"
TARGETS = {"faces": 2000.0, "photos": 10.0, "onnx_speedup": 1.5}


def rate(fn: Callable[[], int], seconds: float, windows: int = 5) -> float:
    """Items per second of `fn` (which returns the items it did): the best of `windows` equal time windows.

    The best, not the mean: on shared cores other jobs only ever slow a window down (as `timeit` advises).
    """
    fn()  # warm-up
    best = 0.0
    for _ in range(windows):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            done += fn()
        best = max(best, done / (time.perf_counter() - start))
    return best


def latency(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds of one call of `fn`, after 10 warm-up calls."""
    for _ in range(10):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 20:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def photo() -> np.ndarray:
    """A 640x480 RGB photo with a face in it (see the module docstring)."""
    import cv2

    try:
        from skimage.data import astronaut

        return cv2.resize(astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    except ImportError:
        img = np.full((480, 640, 3), 128, np.uint8)
        rng = np.random.default_rng(0)
        for x in (40, 260, 470):
            img[100:244, x : x + 144] = rng.integers(0, 256, (144, 144, 1), dtype=np.uint8)
        return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help=f"model to time (default: {DEFAULT_MODEL.relative_to(ROOT)})")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure (default 5)")
    ap.add_argument("--data", help="FER2013 CSV or folder: adds int8 ONNX and PublicTest accuracies")
    args = ap.parse_args()
    data = load_fer2013(args.data) if args.data else None
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.model or DEFAULT_MODEL.exists():
        pred = load(args.model or DEFAULT_MODEL, device="cpu")
    else:
        pred = untrained(FALLBACK_CONFIG, device="cpu")
    print(f"model: {pred.source} ({pred.meta['arch']}, {pred.meta['input_size']} px input)")
    amp = Precision.select("auto", pred.device).name  # what predict_logits runs PyTorch in here
    print(f"threads: {args.threads}, PyTorch predicts in {amp} (the graph row: fp32), ONNX Runtime in fp32")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}\n")

    faces = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)
    faces_per_s = rate(lambda: len(pred.predict_crops(faces)), args.seconds)

    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        jpg = Path(tmp) / "photo.jpg"
        Image.fromarray(photo()).save(jpg, quality=90)
        found = len(pred.faces(read_image(jpg)))

        def one_photo() -> int:
            pred.faces(read_image(jpg))
            return 1

        photos_per_s = rate(one_photo, args.seconds)

        one = faces[:1]
        s = pred.meta["input_size"]
        x = torch.randn(1, 1, s, s).contiguous(memory_format=torch.channels_last)

        def eager() -> None:
            with torch.no_grad():
                pred.model(x)

        # PyTorch first, then ONNX Runtime: interleaving the two made PyTorch's single-face latency 100x
        # worse on 2 cores (likely each runtime's idle threads spinning after its last call).
        graph, whole = {"torch": latency(eager, args.seconds)}, {}
        whole["torch"] = latency(lambda: pred.predict_crops(one), args.seconds)
        onnx_file = export(pred.model, pred.meta, Path(tmp) / "model.onnx")
        session = onnx_session(onnx_file, args.threads)
        onnx_pred = Predictor(OnnxModule(session), pred.meta, pred.device, "onnx")
        onnx_faces_per_s = rate(lambda: len(onnx_pred.predict_crops(faces)), args.seconds)
        feed = {"image": x.numpy().copy()}
        graph["onnx"] = latency(lambda: session.run(None, feed), args.seconds)
        whole["onnx"] = latency(lambda: onnx_pred.predict_crops(one), args.seconds)
        int8: dict[str, float] = {}
        if data is not None:
            int8_file = Path(tmp) / "model_int8.onnx"
            int8["agreement"] = quantize_int8(
                onnx_file, int8_file, pred.meta, calibration_faces(data.split("Training"))
            )
            int8_session = onnx_session(int8_file, args.threads)
            int8_pred = Predictor(OnnxModule(int8_session), pred.meta, pred.device, "int8")
            int8["faces_per_s"] = rate(lambda: len(int8_pred.predict_crops(faces)), args.seconds)
            test = data.split("PublicTest")
            images = torch.from_numpy(test.images)
            runtimes = {"PyTorch fp32": pred, "ONNX Runtime fp32": onnx_pred, "ONNX Runtime int8": int8_pred}
            for name, p in runtimes.items():
                logits = predict_logits(p.model, p.meta, images, precision="fp32")
                int8[name] = float((logits.argmax(1).numpy() == test.labels).mean())
    load_after = os.getloadavg()

    print("| figure | measured | target |")
    print("|---|---:|---:|")
    target = f">= {TARGETS['faces']:,.0f}"
    print(f"| pre-cut 48x48 faces, batches of 256, PyTorch | {faces_per_s:,.0f} faces/s | {target} |")
    print(
        f"| pre-cut 48x48 faces, batches of 256, ONNX Runtime | {onnx_faces_per_s:,.0f} faces/s | {target} |"
    )
    if int8:
        print(
            f"| pre-cut 48x48 faces, batches of 256, ONNX Runtime int8 | {int8['faces_per_s']:,.0f} faces/s "
            f"| {target} |"
        )
    print(
        f"| 640x480 JPEG photos, decode + detect + classify ({found} face) | {photos_per_s:.1f} photos/s "
        f"| >= {TARGETS['photos']:.0f} |"
    )
    for name, t in (("model graph, fp32", graph), (f"predict_crops, PyTorch {amp}", whole)):
        print(
            f"| single face, {name}: ONNX Runtime {t['onnx'] * 1e3:.2f} ms, PyTorch eager "
            f"{t['torch'] * 1e3:.2f} ms | {t['torch'] / t['onnx']:.2f}x faster "
            f"| >= {TARGETS['onnx_speedup']}x |"
        )
    if int8:
        accuracies = ", ".join(f"{k} {int8[k]:.2%}" for k in int8 if k not in ("faces_per_s", "agreement"))
        print(f"\nPublicTest accuracy (no TTA): {accuracies}")
        print(f"int8 agreement with the float graph on 512 held-out Training faces: {int8['agreement']:.1%}")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}")


if __name__ == "__main__":
    main()
