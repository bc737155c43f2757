"""Benchmark `fer-tune predict`'s three targets on the CPU, and print them as a markdown table.

    python benchmarks/bench_predict.py [MODEL ...] [--threads 2] [--seconds 5] [--data FER2013]

1. classification of pre-cut 48x48 faces in batches of 256 (`Predictor.predict_crops`): faces/s, through
   PyTorch and through ONNX Runtime;
2. detection + classification of 640x480 JPEG photos, decoding included (`read_image`, `Predictor.faces`):
   photos/s, with the default detector (the SSD) and with `--detector haar`; the photo is scikit-image's
   astronaut (one face) resized to 640x480, or, without scikit-image, three FER2013-sized faces of random
   pixels on gray (detection then finds none: a lower bound on work);
3. single-face latency (batch 1, median) of the model through ONNX Runtime and through PyTorch eager, the
   graph alone (both fp32) and the whole `predict_crops` (normalise, crop, softmax; PyTorch in the precision
   `predict_logits` picks: bf16 autocast on CPUs with AMX), measured in the same run.

With `--data FER2013`, also ONNX Runtime's static int8 quantization of the same graph (`fer-tune export-model
--quantize int8`, calibrated on 512 Training faces): its faces/s, and the PublicTest accuracy of PyTorch
(fp32, as `fer-tune evaluate` scores), the float ONNX graph and the int8 one, so speed is never bought blind.

MODELs default to the CPU reference's seed ensemble (results/cpu-amx/final) and the one model distilled
from it (results/cpu-amx/distilled), those present, else an untrained model of configs/cpu_small.yaml
(speed does not depend on the weights); the first lines say which were used. Each model is a column; every
model's PyTorch figures are taken before any ONNX Runtime figure, and the later models' rates are also given
as ratios to the first's, measured in the same run. The load average before and after is printed (other jobs
on shared cores slow every figure).
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

from fer_tune.data import FER2013, load_fer2013
from fer_tune.inference import HaarDetector, OnnxModule, Predictor, load, onnx_session, read_image, untrained
from fer_tune.inference.model_export import calibration_faces, export, quantize_int8
from fer_tune.training import Precision, predict_logits

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [ROOT / "results" / "cpu-amx" / n for n in ("final", "distilled")]
FALLBACK_CONFIG = ROOT / "configs" / "cpu_small.yaml"
TARGETS = {"faces": 2000.0, "photos": 10.0, "onnx_speedup": 1.5}
# 256 random pre-cut faces: speed does not depend on what they show.
FACES = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)


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


def torch_figures(pred: Predictor, jpg: Path, seconds: float) -> dict[str, float]:
    """faces/s, photos/s and single-face latencies through PyTorch."""
    fig = {"faces": rate(lambda: len(pred.predict_crops(FACES)), seconds)}
    fig["found"] = len(pred.faces(read_image(jpg)))

    def one_photo() -> int:
        pred.faces(read_image(jpg))
        return 1

    fig["photos"] = rate(one_photo, seconds)
    default = pred.detector
    pred.detector = HaarDetector()  # `fer-tune predict --detector haar`, timed beside the default
    fig["photos_haar"] = rate(one_photo, seconds)
    pred.detector = default
    s = pred.meta["input_size"]
    x = torch.randn(1, 1, s, s).contiguous(memory_format=torch.channels_last)

    def eager() -> None:
        with torch.no_grad():
            pred.model(x)

    fig["graph"] = latency(eager, seconds)
    fig["whole"] = latency(lambda: pred.predict_crops(FACES[:1]), seconds)
    return fig


def onnx_figures(
    pred: Predictor, tmp: Path, threads: int, seconds: float, data: FER2013 | None
) -> dict[str, float]:
    """The same through ONNX Runtime (fp32; with data also int8, and PublicTest accuracies)."""
    onnx_file = export(pred.model, pred.meta, tmp / "model.onnx")
    session = onnx_session(onnx_file, threads)
    onnx_pred = Predictor(OnnxModule(session), pred.meta, pred.device, "onnx")
    fig = {"onnx_faces": rate(lambda: len(onnx_pred.predict_crops(FACES)), seconds)}
    s = pred.meta["input_size"]
    feed = {"image": np.random.default_rng(1).standard_normal((1, 1, s, s), dtype=np.float32)}
    fig["onnx_graph"] = latency(lambda: session.run(None, feed), seconds)
    fig["onnx_whole"] = latency(lambda: onnx_pred.predict_crops(FACES[:1]), seconds)
    if data is None:
        return fig
    int8_file = tmp / "model_int8.onnx"
    fig["agreement"] = quantize_int8(
        onnx_file, int8_file, pred.meta, calibration_faces(data.split("Training"))
    )
    int8_pred = Predictor(OnnxModule(onnx_session(int8_file, threads)), pred.meta, pred.device, "int8")
    fig["int8_faces"] = rate(lambda: len(int8_pred.predict_crops(FACES)), seconds)
    test = data.split("PublicTest")
    images = torch.from_numpy(test.images)
    for name, p in {"acc_torch": pred, "acc_onnx": onnx_pred, "acc_int8": int8_pred}.items():
        logits = predict_logits(p.model, p.meta, images, precision="fp32")
        fig[name] = float((logits.argmax(1).numpy() == test.labels).mean())
    return fig


ROWS = [  # (figure, key, format, target)
    ("pre-cut 48x48 faces, batches of 256, PyTorch", "faces", "{:,.0f}/s", f">= {TARGETS['faces']:,.0f}"),
    ("the same through ONNX Runtime, fp32", "onnx_faces", "{:,.0f}/s", f">= {TARGETS['faces']:,.0f}"),
    ("the same through ONNX Runtime, int8", "int8_faces", "{:,.0f}/s", f">= {TARGETS['faces']:,.0f}"),
    ("640x480 JPEG photos, decode + detect + classify", "photos", "{:.1f}/s", f">= {TARGETS['photos']:.0f}"),
    ("the same, `--detector haar`", "photos_haar", "{:.1f}/s", f">= {TARGETS['photos']:.0f}"),
    (
        "single face, model graph fp32: PyTorch / ONNX Runtime",
        "graph_x",
        "{:.2f}x",
        f">= {TARGETS['onnx_speedup']}x",
    ),
    (
        "single face, predict_crops: PyTorch / ONNX Runtime",
        "whole_x",
        "{:.2f}x",
        f">= {TARGETS['onnx_speedup']}x",
    ),
    ("PublicTest accuracy, PyTorch fp32 (no TTA)", "acc_torch", "{:.2%}", ""),
    ("PublicTest accuracy, ONNX Runtime fp32", "acc_onnx", "{:.2%}", ""),
    ("PublicTest accuracy, ONNX Runtime int8", "acc_int8", "{:.2%}", ""),
    ("int8 agreement with the float graph (512 held-out Training faces)", "agreement", "{:.1%}", ""),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="models to time (default: results/cpu-amx/final and distilled)")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure (default 5)")
    ap.add_argument("--data", help="FER2013 CSV or folder: adds int8 ONNX and PublicTest accuracies")
    args = ap.parse_args()
    data = load_fer2013(args.data) if args.data else None
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    paths = args.models or [m for m in DEFAULT_MODELS if m.exists()]
    preds = [load(m, device="cpu") for m in paths] or [untrained(FALLBACK_CONFIG, device="cpu")]
    for pred in preds:
        params = sum(p.numel() for p in pred.model.parameters())
        print(
            f"model: {pred.source} ({pred.meta['arch']}, {params / 1e6:.2f}M parameters, "
            f"{pred.meta['input_size']} px input)"
        )
    amp = Precision.select("auto", preds[0].device).name  # what predict_logits runs PyTorch in here
    print(f"threads: {args.threads}, PyTorch predicts in {amp} (the graph row: fp32), ONNX Runtime in fp32")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}\n")

    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        jpg = Path(tmp) / "photo.jpg"
        Image.fromarray(photo()).save(jpg, quality=90)
        # Every model's PyTorch figures first, then ONNX Runtime's: interleaving the two made PyTorch's
        # single-face latency 100x worse on 2 cores (likely each runtime's idle threads spinning).
        figs = [torch_figures(pred, jpg, args.seconds) for pred in preds]
        for i, (pred, fig) in enumerate(zip(preds, figs, strict=True)):
            (Path(tmp) / str(i)).mkdir()
            fig |= onnx_figures(pred, Path(tmp) / str(i), args.threads, args.seconds, data)
            fig["graph_x"], fig["whole_x"] = (
                fig["graph"] / fig["onnx_graph"],
                fig["whole"] / fig["onnx_whole"],
            )
    load_after = os.getloadavg()

    names = [Path(p.source).name if p.source else "model" for p in preds]
    print("| figure | " + " | ".join(names) + " | target |")
    print("|---|" + "---:|" * len(preds) + "---:|")
    for label, key, fmt, target in ROWS:
        if all(key in f for f in figs):
            print(f"| {label} | " + " | ".join(fmt.format(f[key]) for f in figs) + f" | {target} |")
    for name, fig in zip(names, figs, strict=True):
        print(
            f"\n{name}: {fig['found']} face(s) found in the photo; single face: PyTorch graph "
            f"{fig['graph'] * 1e3:.2f} ms, ONNX Runtime {fig['onnx_graph'] * 1e3:.2f} ms; predict_crops "
            f"{fig['whole'] * 1e3:.2f} ms and {fig['onnx_whole'] * 1e3:.2f} ms"
        )
    if len(preds) > 1:
        base = names[0]
        for name, fig in zip(names[1:], figs[1:], strict=True):
            ratios = ", ".join(
                f"{k} {fig[k] / figs[0][k]:.2f}x"
                for k in ("faces", "onnx_faces", "int8_faces", "photos", "photos_haar")
                if k in fig
            )
            print(f"{name} against {base} (same run): {ratios}")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}")


if __name__ == "__main__":
    main()
