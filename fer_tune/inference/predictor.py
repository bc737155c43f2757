"""Emotions of faces, from Python: `load(MODEL)` gives a `Predictor` with `.predict(images)` and `.classes`.

MODEL is a run folder or `model.pt`, a retrain folder (its seed ensemble, `fer_tune.training.ensemble`), or
an ONNX file from `fer-tune export-model` (run by ONNX Runtime, the `deploy` extra). Every backend goes
through `evaluate.predict_logits`: normalisation, the center crop and TTA are the ones the model was
evaluated with.

    >>> p = load("results/reference/final")
    >>> probs = p.predict([face_crop, pil_image])   # (2, 7) probabilities, columns p.classes
    >>> faces = p.faces(photo)                       # detect, crop as FER2013, classify
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_tune.base import DataError, DeviceError
from fer_tune.data import EMOTIONS, MIN_SIDE, SIZE
from fer_tune.inference.detect import Box, FaceDetector, crop, make_detector, to_gray, to_uint8_rgb
from fer_tune.inference.onnx_runtime import OnnxModule, onnx_session
from fer_tune.inference.upright import EyeLeveller
from fer_tune.training import predict_logits, resolve_device

FER_MEAN, FER_STD = 129.48, 64.97  # FER2013 Training pixels (0..255), as results/reference's model.pt says


@dataclass(frozen=True)
class Face:
    """One classified face: its FER2013-framed box and the probability of each class.

    Args:
        box: the face's square in the photo, px.
        probs: (7,) float32 probabilities, in `EMOTIONS` order.
    """

    box: Box
    probs: np.ndarray  # (7,) float32, in EMOTIONS order

    @property
    def emotion(self) -> str:
        """The most probable class's name."""
        return EMOTIONS[int(self.probs.argmax())]

    @property
    def probability(self) -> float:
        """The most probable class's probability."""
        return float(self.probs.max())


def as_face(image: Any) -> np.ndarray:
    """A face crop (PIL image, or numpy (H, W), (H, W, 3) or (H, W, 4), any dtype) as 48x48 uint8 gray.

    Args:
        image: the crop; RGB(A) is made gray, uint16 and floats in 0..1 are scaled to uint8, and other sizes
            are resized (area averaging when shrinking, cubic when enlarging).

    Returns:
        (48, 48) uint8.

    Raises:
        ValueError: an unsupported dtype or shape, or a side under `MIN_SIDE` (16 px): enlarged to 48 it would
            be a blur, not a face.
    """
    import cv2

    if not isinstance(image, np.ndarray):  # a PIL image, of any mode
        image = to_uint8_rgb(image)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        if a.dtype == np.uint16:
            a = (a / 257.0 + 0.5).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):  # floats in 0..1, as skimage's convention
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        else:
            raise ValueError(f"image dtype {a.dtype} is not uint8, uint16 or float")
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[2] == 3:
        a = to_gray(np.ascontiguousarray(a))
    if a.ndim != 2:
        raise ValueError(f"image of shape {a.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
    if min(a.shape) < MIN_SIDE:
        h, w = a.shape
        raise ValueError(f"{w}x{h} px is too small for a face crop (at least {MIN_SIDE}x{MIN_SIDE})")
    if a.shape == (SIZE, SIZE):
        return a
    shrink = min(a.shape) >= SIZE
    return cv2.resize(a, (SIZE, SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


class Predictor:
    """A loaded model with its normalisation: classifies face crops and whole photos.

    Args:
        model: the classifier (a model, an `Ensemble` or an `OnnxModule`), in eval mode on `device`.
        meta: its meta (`mean`, `std`, `input_size`, `config`, ...), as `ensemble.load` returns it.
        device: where the model runs.
        source: where it was loaded from, for messages.
        precision: a `train.precision` value; `auto` is bf16 on GPUs and on CPUs with native bf16.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        device: torch.device,
        source: str,
        precision: str = "auto",
    ) -> None:
        self.model, self.meta, self.device, self.source = model, meta, device, source
        self.precision = precision  # a train.precision value: auto is bf16 on GPUs and CPUs with native bf16
        self.classes: tuple[str, ...] = tuple(meta.get("classes", EMOTIONS))
        self._detector: FaceDetector | None = None
        # Turn each detected face upright from its eyes before classifying it: 4-5 points back on faces
        # turned by 30 degrees, none lost on upright ones, about 11 ms per face (docs/predict.md).
        self.upright = True
        self._leveller: EyeLeveller | None = None

    @property
    def detector(self) -> FaceDetector:
        """The face detector (the SSD unless set), built on first use (a crops-only user never loads it)."""
        if self._detector is None:
            self._detector = make_detector()
        return self._detector

    @detector.setter
    def detector(self, detector: FaceDetector) -> None:
        self._detector = detector

    @property
    def leveller(self) -> EyeLeveller | None:
        """The eye leveller when `upright` (built on first use), else None."""
        if self.upright and self._leveller is None:
            self._leveller = EyeLeveller()
        return self._leveller if self.upright else None

    def predict_crops(self, crops: np.ndarray, tta: str = "none") -> np.ndarray:
        """Probabilities (N, 7) float32 of uint8 face crops (N, 48, 48), in batches of 256.

        Args:
            crops: (N, 48, 48) uint8 faces, framed as FER2013's.
            tta: `none`, `flip` or `tencrop`.

        Returns:
            (N, 7) float32, columns in `classes` order.
        """
        images = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.uint8)).to(self.device)
        # The device's fastest precision (bf16 on CPUs with AMX or AVX512-BF16): `fer-tune evaluate` scores
        # in fp32 on a CPU.
        logits = predict_logits(self.model, self.meta, images, tta, precision=self.precision)
        return logits.softmax(-1).cpu().numpy()

    def predict(self, images: Any, tta: str = "none") -> np.ndarray:
        """Probabilities (N, 7) of face crops: one image or a sequence (numpy arrays or PIL images).

        A (N, 48, 48) uint8 array is taken as N crops; any other image is made 48x48 gray first.

        Args:
            images: one crop, a sequence of them, or an (N, H, W[, C]) array.
            tta: `none`, `flip` or `tencrop`.

        Returns:
            (N, 7) float32, columns in `classes` order.

        Raises:
            ValueError: an image of an unsupported dtype or shape.
        """
        if isinstance(images, np.ndarray):
            stack = images.ndim == 4 or (images.ndim == 3 and images.shape[1:] == (SIZE, SIZE))
            if stack and images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE):
                return self.predict_crops(images, tta)  # already crops: no per-image work
            items = list(images) if stack else [images]
        else:
            items = list(images) if isinstance(images, Sequence) else [images]
        crops = np.stack([as_face(a) for a in items]) if items else np.zeros((0, SIZE, SIZE), np.uint8)
        return self.predict_crops(crops, tta)

    def faces(self, image: Any, *, detect: bool = True, tta: str = "none") -> list[Face]:
        """Find the faces in a photo (RGB or gray numpy, or PIL), crop each as FER2013 does, classify them.

        `detect=False` takes the whole image as one face. Largest face first; [] when none is found.

        Args:
            image: a photo: (H, W) gray or (H, W, 3[+1]) RGB uint8 numpy, or a PIL image.
            detect: find faces with the detector; False takes the whole image as one face.
            tta: `none`, `flip` or `tencrop`.

        Returns:
            The faces, largest first.
        """
        rgb = image if isinstance(image, np.ndarray) else to_uint8_rgb(image)
        gray = rgb if rgb.ndim == 2 else to_gray(np.ascontiguousarray(rgb[..., :3]))
        h, w = gray.shape
        det = self.detector if detect else None  # built only when used
        # The SSD sees colour; the cascade is given the gray image made here instead of making its own.
        boxes = det.detect(rgb if det.colour else gray) if det else [Box(0, 0, w, h)]
        if not boxes:
            return []
        if not detect:
            crops = as_face(gray)[None]
        elif self.leveller is not None:
            crops = np.stack([self.leveller.crop(gray, b)[0] for b in boxes])
        else:
            crops = np.stack([crop(gray, b) for b in boxes])
        return [Face(b, p) for b, p in zip(boxes, self.predict_crops(crops, tta), strict=True)]


def untrained(config: str | Path | dict[str, Any], device: str | torch.device | None = "cpu") -> Predictor:
    """A `Predictor` of a run config's model with random weights and FER2013's Training mean and std.

    For benchmarks and tests: speed and file handling do not depend on the weights.

    Args:
        config: a run config YAML file, or its mapping.
        device: where the model runs; None to pick CUDA when available.

    Returns:
        The predictor; its weights are drawn with the config's seed.

    Raises:
        ConfigError: the config is not valid.
        DeviceError: the device cannot be used.
    """
    from fer_tune.models import build_model
    from fer_tune.training import RunConfig, model_meta

    cfg = RunConfig.from_dict(config) if isinstance(config, dict) else RunConfig.from_yaml(config)
    dev = resolve_device(device)
    state = {"mean": FER_MEAN, "std": FER_STD, "input_size": cfg.augment.input_size}
    meta = model_meta(cfg, [], state) | {"members": ["untrained"]}
    with torch.random.fork_rng(devices=[]):  # the config's seed, without moving the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    return Predictor(model, meta, dev, f"untrained {cfg.model.arch}")


def load(model: str | Path, device: str | torch.device | None = None) -> Predictor:
    """A `Predictor` of a run folder, model.pt, retrain folder (seed ensemble) or exported ONNX file.

    Args:
        model: a run folder, `model.pt`, retrain folder or `.onnx` file.
        device: where a PyTorch model runs; None for CUDA when available. ONNX files run on the CPU.

    Returns:
        The predictor.

    Raises:
        DataError: the file cannot be read, or an ONNX file lacks fer-tune's metadata.
        DeviceError: the device cannot be used, or a GPU asked for an ONNX file.
    """
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        from fer_tune.inference.onnx_runtime import read_metadata

        if not path.is_file():
            raise DataError(f"{path}: no such ONNX file")
        dev = torch.device("cpu")
        if device is not None and resolve_device(device).type != "cpu":
            raise DeviceError(f"{path}: an ONNX model runs on the CPU here (ONNX Runtime's CPU provider)")
        session = onnx_session(path)
        try:
            meta = read_metadata(session.get_modelmeta().custom_metadata_map)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        return Predictor(OnnxModule(session), meta, dev, str(path))
    from fer_tune.training.ensemble import load as load_model

    dev = resolve_device(device)
    net, meta = load_model(path, device=dev)
    return Predictor(net, meta, dev, str(path))
