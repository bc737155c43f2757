"""`fer-tune export-model`: a trained model (or a retrain's seed ensemble, one graph) as ONNX or
TorchScript.

The exported graph takes what the model itself takes: float32 (B, 1, S, S) with a dynamic batch B, a 48x48
grayscale face normalised as `(pixel - mean) / std` and center-cropped to S. It returns logits (B, 7) (for
an ensemble, the log of the mean of its members' probabilities). The file's metadata says how to feed it:
`METADATA_KEYS` below, strings (numbers and lists as JSON), in ONNX's `metadata_props` or TorchScript's
extra file `fer_tune.json`. `fer_tune.inference.predictor.load` reads both kinds of ONNX file back.

`export_int8` writes ONNX Runtime's static int8 quantization of that graph (QDQ, 7-bit weights per
channel): activations are calibrated on real faces (the data's Training split), and the file says
`quantized: int8`. On CPUs with VNNI or AMX int8 it classifies faster, at a small cost in agreement with the
float model, which the export measures on other Training faces and prints.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_tune.base import DataError, OutputError, check_output
from fer_tune.inference.onnx_runtime import TORCHSCRIPT_META, metadata
from fer_tune.training import center_crop, model_files, normalize
from fer_tune.training.ensemble import load

FORMATS = ("onnx", "torchscript")
MIN_AGREEMENT = 0.95  # an int8 graph that changes more top-1 answers than this is refused
OPSET = 18
STACK_TRACE = "pkg.torch.onnx.stack_trace"  # node metadata: the exporting machine's file paths


def export_model(model_path: str | Path, out: str | Path, fmt: str = "onnx", *, check: bool = True) -> Path:
    """Write the model (or seed ensemble) at `model_path` to `out` as `fmt`; returns `out`.

    With `check` (ONNX only), ONNX Runtime's logits on random faces are compared with PyTorch's and a
    difference above 1e-4 is an error.

    Args:
        model_path: a run folder, a model.pt file or a retrain folder (its seed ensemble).
        out: the file to write (`.onnx` or `.pt`); its folder is created.
        fmt: `onnx` or `torchscript`.
        check: compare ONNX Runtime's logits with PyTorch's (ONNX only).

    Returns:
        `out`.

    Raises:
        DataError: the model cannot be read, the deploy extra is missing, or the check failed.
        OutputError: `out` cannot be written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    _check_sources(model_path, out)
    model, meta = load(model_path, device="cpu")
    return export(model, meta, out, fmt, check=check)


def _check_sources(model_path: str | Path, out: str | Path) -> None:
    """Refuse an `out` that is one of the model's files (its `model.pt`, or the `checkpoint.pt` beside it) or
    lies in a search folder: before anything is read or written.

    Args:
        model_path: a run folder, a model.pt file or a retrain folder.
        out: the file to write.

    Raises:
        DataError: `model_path` holds no model.
        OutputError: `out` would write over a file of the model or of a search.
    """
    files = model_files(model_path)
    check_output(out, "-o", sources=[*files, *(f.parent / "checkpoint.pt" for f in files)])


def export_int8(model_path: str | Path, out: str | Path, faces: np.ndarray) -> float:
    """`export_model` to ONNX, then `quantize_int8` into `out` with `faces`; returns the top-1 agreement.

    Args:
        model_path: a run folder, a model.pt file or a retrain folder (its seed ensemble).
        out: the `.onnx` file to write.
        faces: (N, 48, 48) uint8 Training faces, N >= 2; half calibrate, half check.

    Returns:
        The share of the checking faces on which the int8 graph gives the float model's answer.

    Raises:
        DataError: the model cannot be read, or the agreement is under `MIN_AGREEMENT` (nothing written).
        OutputError: `out` cannot be written.
    """
    if len(faces) < 2:
        raise ValueError("int8 quantization needs at least 2 calibration faces")
    _check_sources(model_path, out)
    model, meta = load(model_path, device="cpu")
    out = Path(out)
    float_onnx = out.with_name(out.stem + ".float.onnx")  # beside the output: its folder is writable
    try:
        export(model, meta, float_onnx, "onnx")
        return quantize_int8(float_onnx, out, meta, faces)
    finally:
        float_onnx.unlink(missing_ok=True)


def export_quantized(
    model_path: str | Path, out: str | Path, data: str | Path, n: int = 512
) -> tuple[float, int]:
    """`fer-tune export-model --quantize int8`: calibrate on `n` Training faces of `data`, write int8 ONNX.

    Args:
        model_path: a run folder, a model.pt file or a retrain folder (its seed ensemble).
        out: the .onnx file to write.
        data: FER2013 (a CSV or an image folder): its Training faces calibrate and check the graph.
        n: faces to take; half calibrate, the other half check agreement with the float model.

    Returns:
        The share of held-out faces on which the int8 graph gives the float model's answer, and their count.
    """
    from fer_tune.data import load_fer2013

    _check_sources(model_path, out)  # before the data is parsed
    faces = calibration_faces(load_fer2013(data).split("Training"), n)
    return export_int8(model_path, out, faces), len(faces) - len(faces) // 2


def calibration_faces(training: Any, n: int = 512) -> np.ndarray:
    """2n faces (n to calibrate, n to check) spread evenly over a FER2013's Training split (every class).

    Args:
        training: a FER2013 holding the Training rows.
        n: faces per half.

    Returns:
        (min(2n, rows), 48, 48) uint8 faces.

    Raises:
        DataError: fewer than 2 rows.
    """
    if len(training) < 2:
        raise DataError(f"{training.source or 'dataset'}: int8 calibration needs 2+ Training faces")
    pick = np.linspace(0, len(training) - 1, min(2 * n, len(training))).astype(int)
    return training.images[pick]


def model_inputs(faces: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """What an exported graph takes: uint8 (N, 48, 48) faces normalised and center-cropped, float32.

    Args:
        faces: (N, 48, 48) uint8.
        meta: the model's meta (`mean`, `std`, `input_size`).

    Returns:
        (N, 1, S, S) float32.
    """
    x = normalize(torch.from_numpy(np.ascontiguousarray(faces, dtype=np.uint8)), meta["mean"], meta["std"])
    return center_crop(x, int(meta["input_size"])).contiguous().numpy()


def quantize_int8(float_onnx: Path, out: Path, meta: dict[str, Any], faces: np.ndarray) -> float:
    """ONNX Runtime's static int8 quantization of `float_onnx` into `out`; returns the top-1 agreement.

    Half of `faces` calibrates the activations' ranges, the other half measures how often the int8 graph's
    answer is the float graph's; under MIN_AGREEMENT the file is not written (DataError).

    Args:
        float_onnx: the float32 graph from `export`.
        out: the int8 `.onnx` file to write.
        meta: the model's meta, written into the file's metadata with `quantized: int8`.
        faces: (N, 48, 48) uint8 faces.

    Returns:
        The top-1 agreement on the second half of `faces`.

    Raises:
        DataError: the agreement is under `MIN_AGREEMENT`.
        OutputError: `out` cannot be written.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fer_tune.inference.onnx_runtime import onnx_session

    half = len(faces) // 2
    calibrate, held_out = model_inputs(faces[:half], meta), model_inputs(faces[half:], meta)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibrate[i : i + 64]} for i in range(0, len(calibrate), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out.with_name(out.stem + ".prepared.onnx")
    partial = out.with_name(out.stem + ".partial.onnx")
    try:
        with warnings.catch_warnings(), _quiet("root"):
            warnings.simplefilter("ignore")
            # Shape inference and ORT's graph optimisations first: batch-norm is folded into the convolutions,
            # so each conv is quantized once, with its folded weights.
            quant_pre_process(str(float_onnx), str(prepared))
            quantize_static(
                str(prepared),
                str(partial),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # 7-bit weights: on x86 CPUs without VNNI (AVX2 only) ORT's u8s8 kernels sum pairs of
                # products into 16 bits, which saturate with 8-bit weights (ORT's quantization guide).
                reduce_range=True,
            )
        want = onnx_session(float_onnx).run(None, {"image": held_out})[0].argmax(1)
        got = onnx_session(partial).run(None, {"image": held_out})[0].argmax(1)
        agreement = float((want == got).mean())
        if agreement < MIN_AGREEMENT:
            raise DataError(
                f"{out}: the int8 graph agrees with the float one on {agreement:.1%} of {len(held_out)} "
                f"held-out faces (< {MIN_AGREEMENT:.0%}); not written"
            )
        proto = onnx.load(str(partial))
        props = metadata(meta) | {"quantized": json.dumps("int8"), "int8_agreement": json.dumps(agreement)}
        onnx.helper.set_model_props(proto, props)
        _write(out, proto.SerializeToString())
    finally:
        prepared.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return agreement


def export(
    model: nn.Module, meta: dict[str, Any], out: str | Path, fmt: str = "onnx", *, check: bool = True
) -> Path:
    """`export_model` of a model in memory with its meta (`mean`, `std`, `input_size`, `arch`, `config`).

    Args:
        model: the model; a float32 CPU copy is exported, the caller's is left as it is.
        meta: its meta.
        out: the file to write; its folder is created.
        fmt: `onnx` or `torchscript`.
        check: compare ONNX Runtime's logits with PyTorch's (ONNX only).

    Returns:
        `out`.

    Raises:
        DataError: the deploy extra is missing, or the check failed.
        OutputError: `out` cannot be written.
    """
    # A copy: .float()/.cpu() convert a module in place, and the caller may go on using theirs.
    model = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot write there: {e.strerror or e}") from None
    example = torch.randn(2, 1, meta["input_size"], meta["input_size"])
    props = metadata(meta)
    if fmt == "torchscript":
        _export_torchscript(model, example, out, props)
    else:
        _export_onnx(model, example, out, props)
        if check:
            diff = onnx_parity(out, model, meta["input_size"])
            if diff > 1e-4:
                raise DataError(f"{out}: ONNX Runtime's logits differ from PyTorch's by {diff:.2e} (> 1e-4)")
    return out


def _export_onnx(model: nn.Module, example: torch.Tensor, out: Path, props: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError as e:
        raise DataError(f"ONNX export needs the deploy extra: pip install 'fer-tune[deploy]' ({e})") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecation chatter
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    drop_stack_traces(proto)
    onnx.helper.set_model_props(proto, props)
    _write(out, proto.SerializeToString())


def drop_stack_traces(proto: Any) -> None:
    """Remove the Python stack trace the exporter records on each node (`pkg.torch.onnx.stack_trace`): it
    names files of the machine that exported the model (its home and virtualenv paths) in a file meant to
    ship. The other node metadata (module names and scopes) stays.

    Args:
        proto: an `onnx.ModelProto`, changed in place.
    """
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: Path, props: dict[str, str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices (trace and save)
        traced = torch.jit.trace(model, example)
        try:
            torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_META: json.dumps(props)})
        except (OSError, RuntimeError) as e:
            raise OutputError(f"{out}: cannot write: {e}") from None


def _write(out: Path, data: bytes) -> None:
    try:
        out.write_bytes(data)
    except OSError as e:
        raise OutputError(f"{out}: cannot write: {e.strerror or e}") from None


class _quiet:
    """Silence loggers (the ONNX exporter logs each step at INFO/WARNING) for the duration of a block."""

    def __init__(self, *names: str) -> None:
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self) -> None:
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self.loggers, self.levels, strict=True):
            lg.setLevel(level)


@torch.no_grad()
def onnx_parity(path: str | Path, model: nn.Module, input_size: int, n: int = 5, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime's and PyTorch's logits on n random normalised faces.

    Args:
        path: the `.onnx` file.
        model: the PyTorch model it was exported from.
        input_size: the image side, px.
        n: how many random faces.
        seed: seeds the faces.

    Returns:
        The largest absolute logit difference.
    """
    from fer_tune.inference.onnx_runtime import onnx_session

    x = torch.randn(n, 1, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    want = model.float().eval()(x).numpy()
    got = onnx_session(path).run(None, {"image": x.numpy()})[0]
    return float(abs(got - want).max())
