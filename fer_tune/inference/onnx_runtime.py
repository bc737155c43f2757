"""Exported models at run time: ONNX Runtime sessions, an ONNX graph as a torch module, and the metadata
an export carries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_tune.base import DataError
from fer_tune.data import EMOTIONS
from fer_tune.inference.detect import FRAMINGS


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of `path` (`threads`: intra-op threads; None: ORT's default, one per core).

    DataError if onnxruntime is missing or the file is not ONNX.

    Args:
        path: an `.onnx` file.
        threads: ORT's intra-op threads; None for its default, one per core.

    Returns:
        An `onnxruntime.InferenceSession` on the CPU.

    Raises:
        DataError: onnxruntime is not installed, or the file is not a readable ONNX model.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        hint = "pip install 'fer-tune[deploy]'"
        raise DataError(f"{path}: running ONNX needs the deploy extra: {hint} ({e})") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers of exported graphs
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types, all from RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable ONNX model ({first})") from None


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a module, so `predict_logits` runs it like a PyTorch model (CPU only).

    Args:
        session: an `onnxruntime.InferenceSession` with one input (the images) and the logits as its first
            output.
    """

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on a batch.

        Args:
            x: (B, 1, S, S) float images, standardised as the model's metadata says.

        Returns:
            (B, 7) float32 logits, on the CPU.
        """
        feed = np.ascontiguousarray(x.detach().cpu().float().numpy())  # channels_last views are strided
        return torch.from_numpy(self.session.run(None, {self.input: feed})[0])


METADATA_KEYS = ("classes", "input_size", "crop_from", "mean", "std", "arch", "members", "config", "framing")

TORCHSCRIPT_META = "fer_tune.json"  # the extra file inside a TorchScript archive


def metadata(meta: dict[str, Any]) -> dict[str, str]:
    """What the exported file says about its input and origin, as strings.

    Args:
        meta: the model's meta, as `fer_tune.training.ensemble.load` returns it.

    Returns:
        `METADATA_KEYS` -> JSON text, for ONNX metadata props or a TorchScript extra file.
    """
    values = {
        "classes": list(EMOTIONS),
        "input_size": int(meta["input_size"]),
        "crop_from": 48,
        "mean": float(meta["mean"]),
        "std": float(meta["std"]),
        "arch": meta["arch"],
        "members": meta.get("members", []),
        "config": meta["config"],
        "framing": FRAMINGS,  # per detector: how its boxes are cut as FER2013 faces
    }
    return {k: json.dumps(v) for k, v in values.items()}


def read_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The inverse of `metadata`: a meta dict as `fer_tune.training.ensemble.load` gives (for
    predict_logits).

    Args:
        props: the exported file's metadata, key -> JSON text.

    Returns:
        The meta dict.

    Raises:
        DataError: a key of `METADATA_KEYS` is missing (not exported by fer-tune).
    """
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise DataError(f"not exported by fer-tune export-model: no metadata {', '.join(missing)}")
    return {k: json.loads(props[k]) for k in METADATA_KEYS}
