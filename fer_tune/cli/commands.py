"""The `fer-tune` commands: each takes the parsed arguments and makes one call into the library.

`fer_tune.cli.scripts` parses the command line and picks one of these; errors the library raises as
`FerTuneError` become one line on stderr and exit status 2 there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fer_tune.base import FerTuneError, check_output, check_writable
from fer_tune.base.outputs import EVALUATE_WRITES, RETRAIN_WRITES, TRAIN_WRITES
from fer_tune.base.storage import is_uri


def check_device(device: str | None) -> None:
    """`--device cuda` on a machine without CUDA: one line before any data is parsed.

    Args:
        device: the `--device` value; None when not given (nothing is checked).

    Raises:
        DeviceError: the device cannot be used.
    """
    if device is not None:
        from fer_tune.training import resolve_device

        resolve_device(device)


def data_command(args: argparse.Namespace) -> int:
    """`fer-tune data PATH`: print what the data holds (images per Usage and class).

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.data import describe, load_fer2013

    print(describe(load_fer2013(args.path)))
    return 0


def train_command(args: argparse.Namespace) -> int:
    """`fer-tune train CONFIG`: train one run config (or continue one with `--resume DIR`).

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.data import load_fer2013
    from fer_tune.training import RunConfig, check_teacher, train
    from fer_tune.training.checkpoint import check_resumable

    if args.config is None and args.resume is None:
        raise FerTuneError("give a run config YAML, or a run to continue with --resume DIR")
    if args.resume is not None and not (Path(args.resume) / "checkpoint.pt").is_file():
        raise FerTuneError(f"--resume {args.resume}: no checkpoint.pt there to continue from")
    cfg = RunConfig.from_yaml(args.config or Path(args.resume) / "config.yaml")
    out = args.out or args.resume or "runs/train"
    check_device(args.device)
    cfg = cfg.override(epochs=args.epochs, teacher=args.teacher)
    if cfg.train.teacher is not None:
        check_teacher(cfg.train.teacher, out)  # before the data is parsed
    if args.resume is not None and Path(out).expanduser().resolve() == Path(args.resume).resolve():
        check_output(out, "--out")  # continuing that run, in place: never in a search's folder
    else:
        sources = [args.config or ""] + ([Path(args.resume) / "checkpoint.pt"] if args.resume else [])
        check_output(out, "--out", sources=[s for s in sources if s], writes=TRAIN_WRITES, kind="run")
    if args.resume is not None:
        check_resumable(args.resume, cfg)  # another config: refused before the data is parsed
    check_writable(out, "--out")  # before the data is parsed: a bad --out costs nothing
    train(cfg, load_fer2013(args.data), out_dir=out, device=args.device, progress=True, resume=args.resume)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """`fer-tune evaluate MODEL`: score a model, or each seed of a retrain folder and their ensemble.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.training import (
        evaluate_dir,
        evaluate_ensemble,
        format_ensemble,
        format_metrics,
        model_files,
    )

    check_device(args.device)
    files = model_files(args.model)
    own = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent  # the default --out
    if args.out is not None and Path(args.out).expanduser().resolve() != own.resolve():
        check_output(args.out, "--out", sources=files, writes=EVALUATE_WRITES, kind="evaluation")
    if len(files) > 1:  # a retrain folder: each seed and their ensemble
        ttas = tuple(dict.fromkeys(("none", "flip", args.tta)))
        result = evaluate_ensemble(args.model, args.data, ttas=ttas, out_dir=args.out, device=args.device)
        print(format_ensemble(result))
        return 0
    # One model: a run folder, a model.pt, or a retrain folder of one seed (seed_<s>/model.pt).
    metrics = evaluate_dir(files[0], args.data, tta=args.tta, out_dir=args.out, device=args.device)
    print(format_metrics(metrics))
    return 0


def search_command(args: argparse.Namespace) -> int:
    """`fer-tune --space SPACE` (no subcommand): run a search, or continue one with `--resume DIR`.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.data import find_data
    from fer_tune.search import SearchResources, load_space, parse_duration, resume_search, run_search
    from fer_tune.search.recovery import check_target

    if args.resume:
        code = resume_search(
            args.resume, retry_errored=args.retry_errored, address=args.address, verbose=args.verbose
        )
        if code != 0:
            return code
        from fer_tune.search import SearchFolder

        return then_retrain(args, SearchFolder.open(args.resume).path)  # a URI: its local mirror
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
        warm_start=[] if args.no_warm_start else None,  # None keeps the space's
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
        retrain=args.retrain,  # with a time budget, the budget covers the retrain too
        warm_start=args.warm_start,
    )
    return then_retrain(args, outcome.folder) if outcome.status == 0 else outcome.status


def then_retrain(args: argparse.Namespace, folder: Path) -> int:
    """`--retrain N`: the finished search's best config, N seeds, into <folder>/final.

    Args:
        args: the parsed command line (`--retrain`, `--gpus`).
        folder: the finished search's local folder.

    Returns:
        The exit status, 0.
    """
    if args.retrain:
        from fer_tune.search import retrain_best

        retrain_best(folder, seeds=args.retrain, device="cpu" if args.gpus == 0 else None)
    return 0


def extend_command(args: argparse.Namespace) -> int:
    """`fer-tune extend DIR --num-samples N`: add a phase of N trials to a search.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.search import extend_search

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


def resume_command(args: argparse.Namespace) -> int:
    """`fer-tune resume DIR`: continue an interrupted search.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.search import resume_search

    return resume_search(
        args.path, retry_errored=args.retry_errored, address=args.address, verbose=args.verbose
    )


def export_command(args: argparse.Namespace) -> int:
    """`fer-tune export DIR`: write a trial's run config (the best by default).

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.search import export_config

    path = export_config(args.search, rank=args.rank, out=args.output)
    print(f"wrote {path}")
    return 0


def retrain_command(args: argparse.Namespace) -> int:
    """`fer-tune retrain CONFIG`: train a config with one or more seeds and evaluate it.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.training import retrain

    check_device(args.device)
    out = Path(args.out).expanduser().resolve()
    config = None if is_uri(args.config) else Path(args.config).expanduser().resolve()
    # --resume of the retrain in --out reads its own config.yaml, and writes it again unchanged.
    own = args.resume and config == out / "config.yaml"
    sources = [config] if config is not None and not own else []
    check_output(args.out, "--out", sources=sources, writes=RETRAIN_WRITES, kind="retrain")
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


def report_command(args: argparse.Namespace) -> int:
    """`fer-tune report DIR...`: write report.md and its figures.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.analysis import write_report

    path = write_report(args.searches, out_dir=args.out)
    print(f"wrote {path}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """`fer-tune predict MODEL INPUT...`: classify the faces in photos, folders and videos.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.inference import load, make_detector, predict_files

    check_device(args.device)
    predictor = load(args.model, device=args.device)
    if not args.no_detect:  # built before the first file: a missing detector model fails at once
        predictor.detector = make_detector(args.detector, args.confidence, args.scale_step)
        predictor.upright = args.upright
    # auto is ten-crop, for one model and an ensemble: on the 45-epoch seeds of the README's first command
    # (docs/benchmarks.md, "The CPU reference", two runs) it added 2.1-3.1 points PublicTest to each seed
    # and 1.8 to their ensemble, at 10x a face's cost (1.7 ms a face for one seed, 6.5 ms for 3, 2 cores).
    tta = "tencrop" if args.tta == "auto" else args.tta
    return predict_files(
        predictor, args.inputs, out=args.out, detect=not args.no_detect, tta=tta, every=args.every
    )


def export_model_command(args: argparse.Namespace) -> int:
    """`fer-tune export-model MODEL`: write it as ONNX (optionally int8) or TorchScript.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from fer_tune.inference import export_model, export_quantized

    out = args.output or ("model.onnx" if args.format == "onnx" else "model.torchscript.pt")
    if not args.quantize:
        print(f"wrote {export_model(args.model, out, args.format)}")
        return 0
    if args.format != "onnx":
        raise FerTuneError(f"--quantize {args.quantize}: ONNX only, not --format {args.format}")
    if not args.data:
        raise FerTuneError(f"--quantize {args.quantize} needs --data: it calibrates on the Training faces")
    # None: not given (scripts.py checks it is >= 1 when given), so export_quantized's default.
    n = {} if args.calibration is None else {"n": args.calibration}
    agreement, held_out = export_quantized(args.model, out, args.data, **n)
    print(f"wrote {out} ({args.quantize}: the float model's answer on {agreement:.1%} of {held_out} faces)")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """`fer-tune serve MODEL`: an HTTP API and a page that classify the faces in photos and webcam frames.

    Args:
        args: the parsed command line.

    Returns:
        The exit status: 0 once stopped (Ctrl-C).
    """
    from fer_tune.inference import load, make_detector, serve

    check_device(args.device)
    predictor = load(args.model, device=args.device)  # a bad MODEL fails here, before the port is bound
    predictor.detector = make_detector(args.detector, args.confidence, args.scale_step)  # so is a bad flag
    predictor.upright = args.upright
    return serve(predictor, args.host, args.port, max_upload_mb=args.max_upload_mb)
