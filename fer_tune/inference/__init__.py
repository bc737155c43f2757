"""Using a trained model: face detection, the predictor, photos and videos, ONNX and TorchScript export."""

from fer_tune.inference.detect import Box, FaceDetector, read_image
from fer_tune.inference.media import predict_files
from fer_tune.inference.model_export import export_int8, export_model, export_quantized
from fer_tune.inference.onnx_runtime import OnnxModule, onnx_session
from fer_tune.inference.predictor import Face, Predictor, load, untrained

__all__ = [
    "Box",
    "export_int8",
    "export_model",
    "export_quantized",
    "Face",
    "FaceDetector",
    "load",
    "onnx_session",
    "OnnxModule",
    "predict_files",
    "Predictor",
    "read_image",
    "untrained",
]
