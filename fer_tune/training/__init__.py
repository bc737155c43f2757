"""Training one run config: configs, augmentation, devices, losses, optimisers, the trainer, checkpoints,
evaluation, ensembles, distillation and retraining with seeds. Ray-free."""

from fer_tune.training.augment import augment_batch, center_crop, eval_batch, normalize
from fer_tune.training.checkpoint import CHECKPOINT_KEYS, load_model, model_meta
from fer_tune.training.config import AugmentConfig, RunConfig, TrainConfig, as_run_config
from fer_tune.training.device import Precision, resolve_device, setup_device, trial_device
from fer_tune.training.distill import Teacher, check_teacher, distill_loss, load_teacher
from fer_tune.training.ensemble import Ensemble, load_models, model_files
from fer_tune.training.evaluate import (
    TTA,
    evaluate_dir,
    evaluate_ensemble,
    evaluate_model,
    format_ensemble,
    format_metrics,
    predict_logits,
    tta_views,
    ttas_by_split,
)
from fer_tune.training.losses import class_weights, classification_loss
from fer_tune.training.metrics import (
    METRIC_KEYS,
    METRIC_MODES,
    OPTIONAL_METRIC_MODES,
    classification_metrics,
    metric_columns,
)
from fer_tune.training.optim import build_optimizer, build_schedulers
from fer_tune.training.retraining import ENSEMBLE_TTAS, retrain
from fer_tune.training.trainer import train

__all__ = [
    "CHECKPOINT_KEYS",
    "METRIC_KEYS",
    "METRIC_MODES",
    "OPTIONAL_METRIC_MODES",
    "ENSEMBLE_TTAS",
    "TTA",
    "as_run_config",
    "augment_batch",
    "AugmentConfig",
    "build_optimizer",
    "build_schedulers",
    "center_crop",
    "check_teacher",
    "class_weights",
    "classification_loss",
    "classification_metrics",
    "distill_loss",
    "Ensemble",
    "eval_batch",
    "evaluate_dir",
    "evaluate_ensemble",
    "evaluate_model",
    "format_ensemble",
    "format_metrics",
    "load_model",
    "load_models",
    "load_teacher",
    "metric_columns",
    "model_files",
    "model_meta",
    "normalize",
    "Precision",
    "predict_logits",
    "resolve_device",
    "retrain",
    "RunConfig",
    "setup_device",
    "Teacher",
    "train",
    "TrainConfig",
    "trial_device",
    "tta_views",
    "ttas_by_split",
]
