"""Model families for FER2013: small factories registered by name, each built from a typed config.

Importing this package registers every family (`cnn`, `resnet`, `vgg`, `cnn_lstm`, `attention`).
"""

from fer_tune.models import attention, cnn, cnn_lstm, resnet, vgg  # noqa: F401  (each registers its family)
from fer_tune.models.attention import AttentionConfig
from fer_tune.models.cnn import CNNConfig
from fer_tune.models.cnn_lstm import CNNLSTMConfig
from fer_tune.models.registry import (
    INPUT_SIZES,
    NUM_CLASSES,
    ModelConfig,
    build_model,
    list_models,
    model_config,
    model_stats,
    register_model,
)
from fer_tune.models.resnet import ResNetConfig
from fer_tune.models.vgg import VGGConfig

__all__ = [
    "INPUT_SIZES",
    "NUM_CLASSES",
    "AttentionConfig",
    "CNNConfig",
    "CNNLSTMConfig",
    "ModelConfig",
    "ResNetConfig",
    "VGGConfig",
    "build_model",
    "list_models",
    "model_config",
    "model_stats",
    "register_model",
]
