"""`fer-tune`'s command line: parsers that turn strings into arguments, then one call into
`fer_tune.cli.commands`.

`fer-tune --space resnet.yaml --gpus 2` (no subcommand) runs a search; the other commands are data, train,
evaluate, resume, extend, export, retrain, report, predict, export-model and serve."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fer_tune.base import MAX_FAILURES, MAX_INT, MAX_TRIALS, FerTuneError, cut
from fer_tune.cli.commands import (
    data_command,
    evaluate_command,
    export_command,
    export_model_command,
    extend_command,
    predict_command,
    report_command,
    resume_command,
    retrain_command,
    search_command,
    serve_command,
    train_command,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (`fer-tune: error: argument --cpus: ...`), as every other error:
    argparse's own prints its usage first and exits itself."""

    def error(self, message: str) -> NoReturn:
        # It quotes the arguments, which may hold line breaks or be long.
        raise FerTuneError(f"{cut(message)} (see {self.prog} --help)")


def _cut(text: str, limit: int = 40) -> str:
    """A flag's value as a message quotes it: on one line (escaped), cut to `limit` characters."""
    return repr(text[:limit])[1:-1] + ("..." if len(text) > limit else "")


def _integer(lo: int, hi: int = MAX_INT) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi, or a one-line error saying the range."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also an integer of over 4,300 digits
            raise argparse.ArgumentTypeError(f"expected an integer, got {_cut(text)}") from None
        if not lo <= value <= hi:
            bounds = f">= {lo}" + (f" and <= {hi}" if hi < MAX_INT else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {_cut(text)}")
        return value

    return integer


def _number(lo: float, hi: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number >= lo (> lo when `above`) and <= hi; `nan`, `inf` are refused."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {_cut(text)}")
        if not ((value > lo if above else value >= lo) and value <= hi):
            if hi < math.inf:
                bounds = f"in {'(' if above else '['}{lo:g}, {hi:g}]"
            else:
                bounds = f"{'>' if above else '>='} {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {_cut(text)}")
        return value

    return number


def _detector_flags(p: argparse.ArgumentParser) -> None:
    """The face detector's flags, shared by predict and serve (docs/predict.md gives their figures)."""
    p.add_argument(
        "--detector",
        choices=["ssd", "haar"],
        default="ssd",
        help="ssd: a CNN (ResNet-10 SSD) that finds covered, turned and cut-off faces (default); "
        "haar: OpenCV's frontal cascade, faster, frontal faces only",
    )
    p.add_argument(
        "--confidence",
        type=_number(0, 1, above=True),
        help="--detector ssd: keep faces at least this confident (default 0.3)",
    )
    p.add_argument(
        "--scale-step",
        type=_number(1, 2, above=True),
        help="--detector haar: the ratio between window sizes (default 1.1); 1.15 detects 1.2x faster and "
        "finds a few percent fewer faces",
    )
    p.add_argument(
        "--upright",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="turn a tilted face upright from its eyes before classifying it (default; --no-upright: as cut, "
        "about 11 ms per face faster)",
    )


def _gpu_share(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        share = _number(0, 1)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or auto, got {_cut(value)}") from None
    return share


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="search space: a bundled name (resnet, resnet.yaml) or a YAML path")
    p.add_argument(
        "--data", help="FER2013 CSV or image folder (default: $FER_TUNE_DATA, the space's data:, ./)"
    )
    p.add_argument("--gpus", type=_number(0), help="GPUs to use (0: CPU only; default: all visible)")
    p.add_argument(
        "--gpus-per-trial",
        type=_gpu_share,
        help="GPU share per trial, e.g. 0.25 packs 4 trials per GPU; auto: measure, per model family, how "
        "many trials packed on one GPU still raise its throughput",
    )
    p.add_argument("--cpus", type=_integer(1), help="CPUs to use (default: all)")
    p.add_argument("--cpus-per-trial", type=_integer(0), help="CPUs (and torch threads) per trial")
    p.add_argument("--num-samples", type=_integer(1, MAX_TRIALS), help=f"trials to run (1 to {MAX_TRIALS})")
    p.add_argument(
        "--time-budget",
        help="stop the search after this long (90m, 2h, 3600s): running trials are stopped when it runs out; "
        "with --retrain, the budget covers the retrain too (the space's search.retrain_share of it)",
    )
    p.add_argument(
        "--max-failures",
        type=_integer(0, MAX_FAILURES),
        help=f"retries of a trial that failed (default 0, at most {MAX_FAILURES})",
    )
    p.add_argument(
        "--trial-timeout",
        help="stop a trial that has not reported an epoch for this long (10m, 1h; default: never): it is "
        "marked timed out and the search goes on",
    )
    p.add_argument(
        "--warm-start",
        nargs="+",
        default=[],
        metavar="DIR",
        help="start Optuna from the finished trials of these earlier searches (their folders), besides the "
        "space's search.warm_start: trials the space could not have proposed are skipped, with a note",
    )
    p.add_argument(
        "--no-warm-start", action="store_true", help="ignore the space's search.warm_start (a cold start)"
    )
    p.add_argument("--name", help="experiment name (default: space name and time)")
    p.add_argument("--results", default="results", help="results directory (default: ./results)")
    p.add_argument("--address", help="join a running Ray cluster: auto or ray://host:port")
    p.add_argument("--wandb-project", help="log every trial to this wandb project (default: $WANDB_PROJECT)")
    p.add_argument("--wandb-mode", choices=["online", "offline", "disabled"], help="wandb mode")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted search in DIR (results/<name>)")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: run errored trials again")
    p.add_argument(
        "--retrain",
        type=_integer(1),
        metavar="N",
        help="when the search has finished, retrain its best config with N seeds (on Training, for the "
        "space's search.retrain_epochs or the config's own epochs; under a time budget, as many of those "
        "as fit what the search left) into <results>/<name>/final and score each seed and their ensemble",
    )
    p.add_argument(
        "--verbose", action="store_true", help="Ray's status table and INFO lines instead of fer-tune's view"
    )


def _parsers() -> dict[str, tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]]:
    def parser(name: str, help: str) -> argparse.ArgumentParser:
        return _Parser(prog=f"fer-tune {name}".strip(), description=help)

    search = parser("", "Search hyperparameters of FER2013 models with Ray Tune (ASHA + Optuna).")
    _add_search_args(search)
    search.epilog = "other commands: " + ", ".join(
        [
            "data",
            "train",
            "evaluate",
            "resume",
            "extend",
            "export",
            "retrain",
            "report",
            "predict",
            "export-model",
            "serve",
        ]
    )

    data = parser("data", "Print images per Usage and class of a FER2013 copy, and the cache location.")
    data.add_argument("path", help="fer2013.csv, icml_face_data.csv, train.csv or an image folder")

    train = parser("train", "Train one run config outside a search.")
    train.add_argument(
        "config",
        nargs="?",
        help="run config YAML (model, train, augment, seed); with --resume: DIR/config.yaml",
    )
    train.add_argument("--data", required=True, help="FER2013 CSV or image folder")
    train.add_argument("--out", help="output folder (default: runs/train; with --resume: DIR)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt")
    train.add_argument("--epochs", type=_integer(1), help="override train.epochs")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")

    evaluate = parser("evaluate", "Evaluate a trained model on every Usage split present in the data.")
    evaluate.add_argument(
        "model",
        help="a model folder (with model.pt), a model.pt file, or a retrain folder (seed_<s>/model.pt): "
        "then each seed and their ensemble are scored without and with flip TTA",
    )
    evaluate.add_argument("--data", required=True, help="FER2013 CSV or image folder")
    evaluate.add_argument(
        "--tta", choices=["none", "flip", "tencrop"], default="none", help="test-time augmentation"
    )
    evaluate.add_argument(
        "--out", help="where to write metrics.json and confusion PNGs (default: the model folder)"
    )
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")

    resume = parser("resume", "Continue an interrupted search.")
    resume.add_argument("path", help="the search folder, results/<name>")
    resume.add_argument("--retry-errored", action="store_true", help="run errored trials again")
    resume.add_argument("--address", help="join a running Ray cluster: auto or ray://host:port")
    resume.add_argument("--verbose", action="store_true", help="Ray's status table and INFO lines")

    extend = parser("extend", "Run more trials of a search, in its folder and Optuna study (a new phase).")
    extend.add_argument("path", help="the search folder, results/<name>")
    extend.add_argument("--num-samples", type=_integer(1, MAX_TRIALS), required=True, help="trials to add")
    extend.add_argument("--space", help="a narrower space (ranges, fixed values); default: the search's own")
    extend.add_argument("--time-budget", help="stop this phase after this long (90m, 2h, 3600s)")
    extend.add_argument("--data", help="FER2013 CSV or image folder (default: the search's)")
    extend.add_argument("--address", help="join a running Ray cluster: auto or ray://host:port")
    extend.add_argument("--verbose", action="store_true", help="Ray's status table and INFO lines")

    export = parser("export", "Write the K-th best trial's complete run config, with provenance.")
    export.add_argument("search", help="the search folder, results/<name>")
    export.add_argument("--rank", type=_integer(1), default=1, help="1 = best (default)")
    export.add_argument("-o", "--output", default="best.yaml", help="output YAML (default: best.yaml)")

    retrain = parser("retrain", "Train an exported config on the full budget and evaluate it on every split.")
    retrain.add_argument("config", help="run config YAML, e.g. from `fer-tune export`")
    retrain.add_argument("--data", required=True, help="FER2013 CSV or image folder")
    retrain.add_argument("--out", required=True, help="output folder")
    retrain.add_argument("--epochs", type=_integer(1), help="override train.epochs")
    retrain.add_argument(
        "--seeds", type=_integer(1), default=1, help="independent runs with seeds seed..seed+N-1"
    )
    retrain.add_argument(
        "--jobs",
        type=_integer(1),
        default=1,
        help="seeds trained at once in separate processes (a GPU fits several)",
    )
    retrain.add_argument(
        "--train-on", choices=["Training", "Training+PublicTest"], help="override train.train_on"
    )
    retrain.add_argument(
        "--tta", choices=["none", "flip", "tencrop"], default="none", help="test-time augmentation"
    )
    retrain.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    for p in (train, retrain):
        p.add_argument(
            "--teacher",
            metavar="MODEL",
            help="distil from this trained model: a run folder, model.pt, or a retrain folder's seed "
            "ensemble (sets train.teacher)",
        )
    retrain.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed from its checkpoint.pt in --out (finished seeds are not trained again)",
    )

    report = parser("report", "Write report.md and figures for one or more searches.")
    report.add_argument("searches", nargs="+", help="search folders, results/<name>")
    report.add_argument("--out", help="output folder (default: <search>/report, or ./report for several)")

    predict = parser("predict", "Find the faces in photos, folders and videos and classify their emotions.")
    predict.add_argument(
        "model", help="a run folder (model.pt), a retrain folder (seed ensemble) or an exported .onnx file"
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="images (jpg, png, webp, bmp, tiff), folders, videos"
    )
    predict.add_argument("--out", help="write annotated copies and predictions.csv here")
    predict.add_argument("--no-detect", action="store_true", help="each image is one face crop")
    predict.add_argument(
        "--tta",
        choices=["auto", "none", "flip", "tencrop"],
        default="auto",
        help="test-time augmentation (auto: tencrop, ten views of each face)",
    )
    predict.add_argument(
        "--every", type=_integer(1), default=10, help="videos: classify every N-th frame (10)"
    )
    _detector_flags(predict)
    predict.add_argument("--device", help="cpu, cuda (default: cuda when available; ONNX runs on cpu)")

    export_model = parser("export-model", "Export a trained model or a retrain's seed ensemble (ONNX, ...).")
    export_model.add_argument("model", help="a run folder (model.pt), a model.pt file or a retrain folder")
    export_model.add_argument(
        "-o", "--output", help="output file (default: model.onnx, or model.torchscript.pt)"
    )
    export_model.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export_model.add_argument(
        "--quantize",
        choices=["int8"],
        help="ONNX Runtime's static int8 quantization (faster on CPUs with VNNI/AMX); needs --data",
    )
    export_model.add_argument("--data", help="with --quantize: FER2013 CSV or folder (its Training faces)")
    export_model.add_argument(
        "--calibration", type=_integer(1), help="with --quantize: faces to calibrate on (512)"
    )

    serve = parser("serve", "Serve a model over HTTP: a JSON API and a page for photos and a webcam.")
    serve.add_argument(
        "model", help="a run folder (model.pt), a retrain folder (seed ensemble) or an exported .onnx file"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)",
    )
    serve.add_argument("--port", type=_integer(0, 65535), default=8000, help="port (default 8000; 0: any)")
    serve.add_argument(
        "--max-upload-mb",
        type=_number(0, above=True),
        default=20.0,
        help="largest upload accepted, MB (default 20); larger ones are refused with 413",
    )
    serve.add_argument("--device", help="cpu, cuda (default: cuda when available; ONNX runs on cpu)")
    _detector_flags(serve)

    return {
        "": (search, search_command),
        "data": (data, data_command),
        "train": (train, train_command),
        "evaluate": (evaluate, evaluate_command),
        "resume": (resume, resume_command),
        "extend": (extend, extend_command),
        "export": (export, export_command),
        "retrain": (retrain, retrain_command),
        "report": (report, report_command),
        "predict": (predict, predict_command),
        "export-model": (export_model, export_model_command),
        "serve": (serve, serve_command),
    }


# Search flags that `--resume DIR` ignores: the search continues with what its folder recorded.
_RESUME_IGNORES = (
    "space",
    "num_samples",
    "time_budget",
    "max_failures",
    "trial_timeout",
    "cpus",
    "cpus_per_trial",
    "gpus_per_trial",
    "name",
    "results",
    "data",
    "wandb_project",
    "wandb_mode",
    "warm_start",
    "no_warm_start",
)


def _refuse_ignored(command: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags given together that would be silently ignored: one line naming them, before anything runs.

    Raises:
        FerTuneError: a flag that only means something with another, or that the other makes meaningless.
    """

    def given(dest: str) -> bool:
        return getattr(args, dest) != parser.get_default(dest)

    def flag(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    if command == "":
        if args.retry_errored and not args.resume:
            raise FerTuneError(
                "--retry-errored needs --resume DIR: it reruns the errored trials of that search"
            )
        ignored = [flag(d) for d in _RESUME_IGNORES if args.resume and given(d)]
        if args.resume and given("gpus") and not args.retrain:
            ignored.append("--gpus")  # with --retrain it picks the retrain's device
        if ignored:
            raise FerTuneError(
                f"--resume {args.resume} continues that search as its folder recorded it, so "
                f"{', '.join(ignored)} would be ignored; to add trials (optionally in a narrower --space): "
                f"fer-tune extend {args.resume} --num-samples N"
            )
    elif command == "export-model" and not args.quantize:
        extra = [flag(d) for d in ("data", "calibration") if given(d)]
        if extra:
            raise FerTuneError(f"{', '.join(extra)}: only with --quantize int8 (the faces it calibrates on)")
    elif command == "predict" and args.no_detect:
        extra = [flag(d) for d in ("detector", "confidence", "scale_step") if given(d)]
        extra += ["--no-upright"] if given("upright") else []
        if extra:
            raise FerTuneError(f"{', '.join(extra)}: set the face detector, which --no-detect turns off")
    if command in ("predict", "serve") and args.detector == "ssd" and given("scale_step"):
        raise FerTuneError("--scale-step sets the haar detector: add --detector haar (ssd has --confidence)")
    if command in ("predict", "serve") and args.detector == "haar" and given("confidence"):
        raise FerTuneError("--confidence sets the ssd detector; the haar cascade gives no confidences")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fer-tune` console script.

    Args:
        argv: the arguments after the program name; None for `sys.argv[1:]`.

    Returns:
        The exit status: 0 done, 1 a search whose trials all failed or an input that could not be read, 2 a
        user-facing error (printed as one line), 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    command = argv[0] if argv and argv[0] in parsers else ""
    parser, handler = parsers[command]
    try:
        args = parser.parse_args(argv[1:] if command else argv)
        _refuse_ignored(command, args, parser)
        return handler(args)
    except FerTuneError as e:
        # One line, no traceback: the message already names the file, row or key. Last, after anything
        # still buffered on stdout (a log that takes both streams).
        sys.stdout.flush()
        line = " ".join(str(e).splitlines())  # a path or a quoted value may hold a line break
        print(f"fer-tune: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fer-tune: interrupted", file=sys.stderr)
        return 130
