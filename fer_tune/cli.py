"""`fer-tune`: parses the command line and calls the library. No logic lives here.

`fer-tune --space resnet.yaml --gpus 2` (no subcommand) runs a search; the other commands are
data, train, evaluate, resume, extend, export, retrain, report, predict and export-model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fer_tune.errors import FerTuneError, check, check_writable


def _check_device(device: str | None) -> None:
    """`--device cuda` on a machine without CUDA: one line before any data is parsed."""
    if device is not None:
        from fer_tune.device import resolve_device

        resolve_device(device)


def _data(args: argparse.Namespace) -> int:
    from fer_tune.data import describe, load_fer2013

    print(describe(load_fer2013(args.path)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from fer_tune.config import RunConfig
    from fer_tune.data import load_fer2013
    from fer_tune.distill import check_teacher
    from fer_tune.train import train

    if args.config is None and args.resume is None:
        raise FerTuneError("give a run config YAML, or a run to continue with --resume DIR")
    if args.resume is not None and not (Path(args.resume) / "checkpoint.pt").is_file():
        raise FerTuneError(f"--resume {args.resume}: no checkpoint.pt there to continue from")
    cfg = RunConfig.from_yaml(args.config or Path(args.resume) / "config.yaml")
    out = args.out or args.resume or "runs/train"
    _check_device(args.device)
    cfg = cfg.override(epochs=args.epochs, teacher=args.teacher)
    if cfg.train.teacher is not None:
        check_teacher(cfg.train.teacher, out)  # before the data is parsed
    check_writable(out, "--out")  # before the data is parsed: a bad --out costs nothing
    train(cfg, load_fer2013(args.data), out_dir=out, device=args.device, progress=True, resume=args.resume)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fer_tune.ensemble import model_files
    from fer_tune.evaluate import evaluate_dir, evaluate_ensemble, format_ensemble, format_metrics

    _check_device(args.device)
    files = model_files(args.model)
    if len(files) > 1:  # a retrain folder: each seed and their ensemble
        ttas = tuple(dict.fromkeys(("none", "flip", args.tta)))
        result = evaluate_ensemble(args.model, args.data, ttas=ttas, out_dir=args.out, device=args.device)
        print(format_ensemble(result))
        return 0
    # One model: a run folder, a model.pt, or a retrain folder of one seed (seed_<s>/model.pt).
    metrics = evaluate_dir(files[0], args.data, tta=args.tta, out_dir=args.out, device=args.device)
    print(format_metrics(metrics))
    return 0


def _search(args: argparse.Namespace) -> int:
    from fer_tune.faults import check_target
    from fer_tune.search import SearchResources, find_data, resume_search, run_search
    from fer_tune.spaces import load_space, parse_duration

    if args.retrain is not None and args.retrain < 1:
        raise FerTuneError(f"--retrain: the number of seeds must be >= 1, got {args.retrain}")
    if args.resume:
        code = resume_search(
            args.resume, retry_errored=args.retry_errored, address=args.address, verbose=args.verbose
        )
        if code != 0:
            return code
        from fer_tune.folder import SearchFolder

        return _then_retrain(args, SearchFolder.open(args.resume).path)  # a URI: its local mirror
    if not args.space:
        raise FerTuneError("give a search space (--space NAME|PATH) or a search to continue (--resume DIR)")
    space = load_space(
        args.space,
        num_samples=args.num_samples,
        time_budget_s=parse_duration(args.time_budget, "--time-budget"),
        trial_timeout_s=parse_duration(args.trial_timeout, "--trial-timeout"),
        max_failures=args.max_failures,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
    )
    resources = SearchResources(args.cpus, args.gpus, args.address, args.gpus_per_trial)
    check_target(args.results, args.name)  # and test-written, before the data is looked for
    outcome = run_search(
        space,
        find_data(args.data, space.data),
        resources,
        name=args.name,
        results=args.results,
        wandb_project=args.wandb_project,
        wandb_mode=args.wandb_mode,
        verbose=args.verbose,
    )
    return _then_retrain(args, outcome.folder) if outcome.status == 0 else outcome.status


def _then_retrain(args: argparse.Namespace, folder: Path) -> int:
    """`--retrain N`: the finished search's best config, N seeds, into <folder>/final, as fer-tune retrain."""
    from fer_tune.folder import SearchFolder
    from fer_tune.retrain import retrain

    if not args.retrain:
        return 0
    search = SearchFolder(folder)
    data = search.read_state().data  # the data the search used
    epochs = search.read_space().search.retrain_epochs  # None: the best config's own
    print(f"retraining the best config of {folder} with {args.retrain} seeds -> {Path(folder) / 'final'}")
    retrain(
        Path(folder) / "best_config.yaml",
        data=data,
        out_dir=Path(folder) / "final",
        epochs=epochs,
        seeds=args.retrain,
        device="cpu" if args.gpus == 0 else None,
        resume=True,  # run again after a crash, it goes on where the retrain stopped
    )
    return 0


def _extend(args: argparse.Namespace) -> int:
    from fer_tune.extend import extend_search

    outcome = extend_search(
        args.path,
        args.num_samples,
        space=args.space,
        time_budget=args.time_budget,
        address=args.address,
        data=args.data,
        verbose=args.verbose,
    )
    return outcome.status


def _resume(args: argparse.Namespace) -> int:
    from fer_tune.search import resume_search

    return resume_search(
        args.path, retry_errored=args.retry_errored, address=args.address, verbose=args.verbose
    )


def _export(args: argparse.Namespace) -> int:
    from fer_tune.results import export_config

    path = export_config(args.search, rank=args.rank, out=args.output)
    print(f"wrote {path}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from fer_tune.retrain import retrain

    _check_device(args.device)
    retrain(
        args.config,
        data=args.data,
        out_dir=args.out,
        epochs=args.epochs,
        seeds=args.seeds,
        jobs=args.jobs,
        resume=args.resume,
        train_on=args.train_on,
        tta=args.tta,
        device=args.device,
        teacher=args.teacher,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from fer_tune.report import write_report

    path = write_report(args.searches, out_dir=args.out)
    print(f"wrote {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fer_tune.faces import FaceDetector
    from fer_tune.photos import predict_files
    from fer_tune.predict import load

    _check_device(args.device)
    step = args.scale_step
    check(step is None or 1 < step <= 2, "--scale-step", f"must be in (1, 2], got {step}")
    predictor = load(args.model, device=args.device)
    if step is not None and not args.no_detect:
        predictor.detector = FaceDetector(scale_step=step)
    return predict_files(
        predictor, args.inputs, out=args.out, detect=not args.no_detect, tta=args.tta, every=args.every
    )


def _export_model(args: argparse.Namespace) -> int:
    from fer_tune.export_model import calibration_faces, export_int8, export_model

    out = args.output or ("model.onnx" if args.format == "onnx" else "model.torchscript.pt")
    if not args.quantize:
        print(f"wrote {export_model(args.model, out, args.format)}")
        return 0
    if args.format != "onnx":
        raise FerTuneError(f"--quantize {args.quantize}: ONNX only, not --format {args.format}")
    if not args.data:
        raise FerTuneError(f"--quantize {args.quantize} needs --data: it calibrates on the Training faces")
    if args.calibration < 1:
        raise FerTuneError(f"--calibration: must be >= 1, got {args.calibration}")
    from fer_tune.data import load_fer2013

    faces = calibration_faces(load_fer2013(args.data).split("Training"), args.calibration)
    agreement = export_int8(args.model, out, faces)
    held_out = len(faces) - len(faces) // 2
    print(f"wrote {out} ({args.quantize}: the float model's answer on {agreement:.1%} of {held_out} faces)")
    return 0


def _gpu_share(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="search space: a bundled name (resnet, resnet.yaml) or a YAML path")
    p.add_argument(
        "--data", help="FER2013 CSV or image folder (default: $FER_TUNE_DATA, the space's data:, ./)"
    )
    p.add_argument("--gpus", type=float, help="GPUs to use (0: CPU only; default: all visible)")
    p.add_argument(
        "--gpus-per-trial",
        type=_gpu_share,
        help="GPU share per trial, e.g. 0.25 packs 4 trials per GPU; auto: measure, per model family, how "
        "many trials packed on one GPU still raise its throughput",
    )
    p.add_argument("--cpus", type=int, help="CPUs to use (default: all)")
    p.add_argument("--cpus-per-trial", type=int, help="CPUs (and torch threads) per trial")
    p.add_argument("--num-samples", type=int, help="trials to run")
    p.add_argument(
        "--time-budget",
        help="stop the search after this long (90m, 2h, 3600s): running trials are stopped when it runs out",
    )
    p.add_argument("--max-failures", type=int, help="retries of a trial that failed (default 0)")
    p.add_argument(
        "--trial-timeout",
        help="stop a trial that has not reported an epoch for this long (10m, 1h; default: never): it is "
        "marked timed out and the search goes on",
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
        type=int,
        metavar="N",
        help="when the search has finished, retrain its best config with N seeds (on Training, for the "
        "space's search.retrain_epochs or the config's own epochs) "
        "into <results>/<name>/final and score each seed and their ensemble",
    )
    p.add_argument(
        "--verbose", action="store_true", help="Ray's status table and INFO lines instead of fer-tune's view"
    )


def _parsers() -> dict[str, tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]]:
    def parser(name: str, help: str) -> argparse.ArgumentParser:
        return argparse.ArgumentParser(prog=f"fer-tune {name}".strip(), description=help)

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
    train.add_argument("--epochs", type=int, help="override train.epochs")
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
    extend.add_argument("--num-samples", type=int, required=True, help="trials to add")
    extend.add_argument("--space", help="a narrower space (ranges, fixed values); default: the search's own")
    extend.add_argument("--time-budget", help="stop this phase after this long (90m, 2h, 3600s)")
    extend.add_argument("--data", help="FER2013 CSV or image folder (default: the search's)")
    extend.add_argument("--address", help="join a running Ray cluster: auto or ray://host:port")
    extend.add_argument("--verbose", action="store_true", help="Ray's status table and INFO lines")

    export = parser("export", "Write the K-th best trial's complete run config, with provenance.")
    export.add_argument("search", help="the search folder, results/<name>")
    export.add_argument("--rank", type=int, default=1, help="1 = best (default)")
    export.add_argument("-o", "--output", default="best.yaml", help="output YAML (default: best.yaml)")

    retrain = parser("retrain", "Train an exported config on the full budget and evaluate it on every split.")
    retrain.add_argument("config", help="run config YAML, e.g. from `fer-tune export`")
    retrain.add_argument("--data", required=True, help="FER2013 CSV or image folder")
    retrain.add_argument("--out", required=True, help="output folder")
    retrain.add_argument("--epochs", type=int, help="override train.epochs")
    retrain.add_argument("--seeds", type=int, default=1, help="independent runs with seeds seed..seed+N-1")
    retrain.add_argument(
        "--jobs", type=int, default=1, help="seeds trained at once in separate processes (a GPU fits several)"
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
    predict.add_argument("--tta", choices=["none", "flip"], default="none", help="test-time augmentation")
    predict.add_argument("--every", type=int, default=10, help="videos: classify every N-th frame (10)")
    predict.add_argument(
        "--scale-step",
        type=float,
        help="the face detector's ratio between window sizes (default 1.1); 1.15 detects 1.2x faster and "
        "finds a few percent fewer faces (README)",
    )
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
        "--calibration", type=int, default=512, help="with --quantize: faces to calibrate on (512)"
    )

    return {
        "": (search, _search),
        "data": (data, _data),
        "train": (train, _train),
        "evaluate": (evaluate, _evaluate),
        "resume": (resume, _resume),
        "extend": (extend, _extend),
        "export": (export, _export),
        "retrain": (retrain, _retrain),
        "report": (report, _report),
        "predict": (predict, _predict),
        "export-model": (export_model, _export_model),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fer-tune` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsers = _parsers()
    command = argv[0] if argv and argv[0] in parsers else ""
    parser, handler = parsers[command]
    args = parser.parse_args(argv[1:] if command else argv)
    try:
        return handler(args)
    except FerTuneError as e:
        # One line, no traceback: the message already names the file, row or key. Last, after anything
        # still buffered on stdout (a log that takes both streams).
        sys.stdout.flush()
        print(f"fer-tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fer-tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
