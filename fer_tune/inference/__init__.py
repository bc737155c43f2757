"""Using a trained model: face detection, the predictor, photos and videos, an HTTP server and its page,
ONNX and TorchScript export."""

from fer_tune.inference.detect import (
    DETECTORS,
    Box,
    FaceDetector,
    HaarDetector,
    SsdDetector,
    make_detector,
    read_image,
)
from fer_tune.inference.media import predict_files
from fer_tune.inference.model_export import export_int8, export_model, export_quantized
from fer_tune.inference.onnx_runtime import OnnxModule, onnx_session
from fer_tune.inference.predictor import Face, Predictor, load, untrained
from fer_tune.inference.server import create_app, serve
from fer_tune.inference.upright import EyeLeveller

__all__ = [
    "Box",
    "create_app",
    "DETECTORS",
    "export_int8",
    "EyeLeveller",
    "export_model",
    "export_quantized",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "load",
    "make_detector",
    "onnx_session",
    "OnnxModule",
    "predict_files",
    "Predictor",
    "read_image",
    "serve",
    "SsdDetector",
    "untrained",
]
