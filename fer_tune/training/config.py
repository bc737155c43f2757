"""The run config: typed groups `model`, `train`, `augment` and a `seed`, each validated where it is declared.

A run config is what one training run (a trial, `fer-tune train`, a retrain) needs. It is read from YAML or a
dict (a sampled search config), fails at once on an unknown key or a bad value with the dotted key path in the
message, and is written back resolved (every default filled in) beside the outputs it produced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fer_tune.base import MAX_SEED, ConfigError, check, coerce, coerce_fields, read_yaml, shown
from fer_tune.base import config_field as _field
from fer_tune.models import model_config

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau", "step")
TRAIN_ON = ("Training", "Training+PublicTest")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CLASS_WEIGHTS = ("none", "inverse", "sqrt")
LOSSES = ("ce", "focal")
SAMPLERS = ("shuffle", "balanced")
PLATEAU_METRICS = ("val_loss", "val_acc")
MAX_VIEWS = 16  # augment.views: more copies of a batch than this is a typo (memory grows with it)
IGNORED_KEYS = ("provenance",)  # written by `fer-tune export`, read by people, ignored by training


def _group_from_dict(cls: type, prefix: str, values: Any) -> Any:
    """Build a config group dataclass from a mapping, naming `prefix.key` for unknown keys and bad types."""
    if values is None:
        values = {}
    check(isinstance(values, Mapping), prefix, f"expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        check(key in fields, f"{prefix}.{key}", f"unknown key; known keys: {', '.join(fields)}")
        kind = fields[key].metadata["type"]
        if value is None and fields[key].metadata.get("optional"):
            kwargs[key] = None
        else:
            kwargs[key] = coerce(f"{prefix}.{key}", value, kind)
    return cls(**kwargs)


@dataclass
class TrainConfig:
    """Optimisation recipe."""

    epochs: int = _field(30, int, "passes over the training split")
    batch_size: int = _field(128, int, "images per step")
    optimizer: str = _field("sgd", str, "sgd | adam | adamw")
    lr: float = _field(0.05, float, "peak learning rate, per batch_size images")
    weight_decay: float = _field(5e-4, float, "L2 penalty (decoupled for adamw)")
    momentum: float = _field(0.9, float, "SGD momentum (adam/adamw: beta1)")
    nesterov: bool = _field(True, bool, "Nesterov momentum for sgd")
    schedule: str = _field("cosine", str, "constant | cosine | onecycle | plateau | step")
    warmup_epochs: float = _field(
        None,
        float,
        "linear warm-up from lr/10, in epochs (not for onecycle); default 1, epochs/5 below 5 epochs",
        optional=True,
    )
    snapshots: int = _field(
        0,
        int,
        "snapshot ensemble: 0 = off; N >= 2 (cosine only, dividing epochs) restarts the cosine N times, one "
        "cycle per epochs/N epochs, and keeps the weights at each cycle's end: snapshots/snapshot_<k>.pt",
    )
    step_size: int = _field(10, int, "step schedule: epochs between decays")
    gamma: float = _field(0.1, float, "step and plateau schedules: decay factor")
    patience: int = _field(3, int, "plateau schedule: epochs without plateau_metric improving, then a decay")
    plateau_metric: str = _field(
        "val_loss",
        str,
        "plateau schedule: val_loss (decay when it stops falling) | val_acc (when it stops rising), both "
        "PublicTest's; train_loss | train_acc without PublicTest",
    )
    label_smoothing: float = _field(0.0, float, "cross-entropy label smoothing")
    grad_clip: float = _field(0.0, float, "max gradient L2 norm; 0 = off")
    ema: float = _field(
        0.0,
        float,
        "exponential moving average of the weights, decay per step, in [0, 1); 0 = off. The average is "
        "scored and saved as the model; `live_val_acc` scores the trained weights",
    )
    sam: float = _field(
        0.0, float, "sharpness-aware minimisation radius rho, in [0, 2]; 0 = off; doubles a step's cost"
    )
    subset: int | None = _field(None, int, "train on a stratified subset of this many images", optional=True)
    train_on: str = _field("Training", str, "Training | Training+PublicTest (final retrain only)")
    class_weights: str = _field(
        "none", str, "none | inverse | sqrt: loss weight per class from its training count (rare counts more)"
    )
    loss: str = _field("ce", str, "ce | focal: cross-entropy, or scaled by (1 - p_true)^focal_gamma")
    focal_gamma: float = _field(2.0, float, "focal loss: how much confident examples are discounted (0: ce)")
    sampler: str = _field("shuffle", str, "shuffle | balanced: classes drawn equally often, with replacement")
    precision: str = _field(
        "auto",
        str,
        "auto | bf16 | fp16 | fp32; auto: bf16 on GPUs of compute capability >= 8, fp16 with a "
        "gradient scaler on older ones; on CPU bf16 with AMX or AVX512-BF16, else fp32",
    )
    teacher: str | None = _field(
        None,
        str,
        "distil from this trained model (a run folder, model.pt, or a retrain folder: its seed ensemble): "
        "the loss becomes (1 - distill_alpha) * the classification loss + distill_alpha * the teacher's",
        optional=True,
    )
    distill_alpha: float = _field(0.9, float, "with a teacher: its share of the loss, in [0, 1]")
    distill_temperature: float = _field(
        2.0, float, "with a teacher: both softmaxes' temperature; the KL term is scaled by its square"
    )

    def __post_init__(self) -> None:
        p = "train"
        coerce_fields(self, p)  # types, and finite numbers: `lr: .inf` passed `lr > 0`
        check(self.epochs >= 1, f"{p}.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"{p}.batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.optimizer in OPTIMIZERS,
            f"{p}.optimizer",
            f"must be one of {OPTIMIZERS}, got {shown(self.optimizer)}",
        )
        check(self.lr > 0, f"{p}.lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"{p}.momentum", f"must be in [0, 1), got {self.momentum}")
        check(
            self.schedule in SCHEDULES,
            f"{p}.schedule",
            f"must be one of {SCHEDULES}, got {shown(self.schedule)}",
        )
        check(
            self.snapshots == 0 or self.snapshots >= 2,
            f"{p}.snapshots",
            f"must be 0 (off) or >= 2, got {self.snapshots}",
        )
        if self.snapshots:
            check(
                self.schedule == "cosine",
                f"{p}.snapshots",
                f"needs train.schedule cosine (snapshots restart it), got {shown(self.schedule)}",
            )
            check(
                self.epochs % self.snapshots == 0,
                f"{p}.snapshots",
                f"must divide train.epochs={self.epochs} (one cosine cycle per epochs/snapshots epochs)",
            )
            check(
                self.ema == 0,
                f"{p}.snapshots",
                "cannot be combined with train.ema: the average would smear the snapshots across restarts",
            )
        cycle = self.epochs // self.snapshots if self.snapshots else self.epochs  # epochs of one lr cycle
        if self.warmup_epochs is None:  # a default the user never wrote must fit any epochs, even 1
            self.warmup_epochs = min(1.0, cycle / 5)
        # onecycle has its own warm-up and ignores warmup_epochs: `--epochs 1` must not trip on it.
        check(
            self.warmup_epochs >= 0 and (self.warmup_epochs < self.epochs or self.schedule == "onecycle"),
            f"{p}.warmup_epochs",
            f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}",
        )
        check(
            not self.snapshots or self.warmup_epochs < cycle,  # the warm-up is in the first cycle
            f"{p}.warmup_epochs",
            f"must be below one snapshot cycle (epochs/snapshots = {cycle}), got {self.warmup_epochs}",
        )
        check(self.step_size >= 1, f"{p}.step_size", f"must be >= 1, got {self.step_size}")
        check(0 < self.gamma < 1, f"{p}.gamma", f"must be in (0, 1), got {self.gamma}")
        check(self.patience >= 0, f"{p}.patience", f"must be >= 0, got {self.patience}")
        check(
            self.plateau_metric in PLATEAU_METRICS,
            f"{p}.plateau_metric",
            f"must be one of {PLATEAU_METRICS}, got {shown(self.plateau_metric)}",
        )
        check(
            0 <= self.label_smoothing < 1,
            f"{p}.label_smoothing",
            f"must be in [0, 1), got {self.label_smoothing}",
        )
        check(self.grad_clip >= 0, f"{p}.grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(0 <= self.ema < 1, f"{p}.ema", f"must be in [0, 1), got {self.ema}")
        check(0 <= self.sam <= 2, f"{p}.sam", f"must be in [0, 2], got {self.sam}")
        check(
            self.subset is None or self.subset >= 7,
            f"{p}.subset",
            f"must be >= 7 (one per class), got {self.subset}",
        )
        check(
            self.train_on in TRAIN_ON,
            f"{p}.train_on",
            f"must be one of {TRAIN_ON}, got {shown(self.train_on)}",
        )
        choices = {"class_weights": CLASS_WEIGHTS, "loss": LOSSES, "sampler": SAMPLERS}
        for key, allowed in {**choices, "precision": PRECISIONS}.items():
            value = getattr(self, key)
            check(value in allowed, f"{p}.{key}", f"must be one of {allowed}, got {shown(value)}")
        check(0 <= self.focal_gamma <= 10, f"{p}.focal_gamma", f"must be in [0, 10], got {self.focal_gamma}")
        alpha, temp = self.distill_alpha, self.distill_temperature
        check(0 <= alpha <= 1, f"{p}.distill_alpha", f"must be in [0, 1], got {alpha}")
        check(0 < temp <= 100, f"{p}.distill_temperature", f"must be in (0, 100], got {temp}")

    @property
    def train_usages(self) -> tuple[str, ...]:
        """The Usage splits `train_on` names (`("Training", "PublicTest")` for `Training+PublicTest`)."""
        return tuple(self.train_on.split("+"))


@dataclass
class AugmentConfig:
    """Whole-batch augmentation, applied on the device to training batches only."""

    hflip: bool = _field(True, bool, "random horizontal flip")
    rotation: float = _field(10.0, float, "max rotation, degrees")
    crop: int = _field(
        4, int, "0 off; 1..16: random shift up to N px (reflect-padded); 32..48: random crop size"
    )
    scale: float = _field(0.0, float, "random zoom by up to this fraction (0.1: 0.9x..1.1x)")
    shift: float = _field(
        0.0,
        float,
        "random translation by up to this fraction of the side, per axis (0.2: +-9.6 px at 48 px), in the "
        "affine grid with rotation and zoom, before `crop`; the uncovered border is mean gray",
    )
    aspect: float = _field(
        1.0,
        float,
        "random stretch: width:height log-uniform in [1/aspect, aspect] (RandomResizedCrop's: 4/3); 1 = off",
    )
    erasing: float = _field(0.0, float, "random-erasing probability per image")
    mixup: float = _field(0.0, float, "mixup Beta(alpha, alpha); 0 = off")
    cutmix: float = _field(0.0, float, "cutmix Beta(alpha, alpha); 0 = off")
    views: int = _field(
        1,
        int,
        f"augmented copies of each image per step, 1..{MAX_VIEWS}, labels repeated (batch augmentation): a "
        "step trains on batch_size x views images; 10 with crop 40 stands for ten-crop training",
    )

    def __post_init__(self) -> None:
        p = "augment"
        coerce_fields(self, p)
        check(0 <= self.rotation <= 180, f"{p}.rotation", f"must be in [0, 180] degrees, got {self.rotation}")
        check(
            self.crop == 0 or 1 <= self.crop <= 16 or 32 <= self.crop <= 48,
            f"{p}.crop",
            f"must be 0, a shift of 1..16 px, or a crop size of 32..48 px, got {self.crop}",
        )
        check(0 <= self.scale <= 0.5, f"{p}.scale", f"must be in [0, 0.5], got {self.scale}")
        check(0 <= self.shift <= 0.5, f"{p}.shift", f"must be in [0, 0.5], got {self.shift}")
        check(1 <= self.aspect <= 2, f"{p}.aspect", f"must be in [1, 2], got {self.aspect}")
        check(0 <= self.erasing <= 1, f"{p}.erasing", f"must be in [0, 1], got {self.erasing}")
        check(self.mixup >= 0, f"{p}.mixup", f"must be >= 0, got {self.mixup}")
        check(self.cutmix >= 0, f"{p}.cutmix", f"must be >= 0, got {self.cutmix}")
        check(1 <= self.views <= MAX_VIEWS, f"{p}.views", f"must be in 1..{MAX_VIEWS}, got {self.views}")

    @property
    def input_size(self) -> int:
        """Side of the images the model sees: the crop size when cropping to a size, else 48."""
        return self.crop if self.crop >= 32 else 48


@dataclass
class RunConfig:
    """Everything one training run needs; `RunConfig.from_dict({"model": {"arch": "resnet"}})` trains.

    Args:
        model: the family's validated model config (`fer_tune.models.model_config`).
        train: the optimisation recipe (`train:` keys).
        augment: the training-batch augmentation (`augment:` keys).
        seed: seeds torch's and numpy's RNGs (initial weights, batch order, augmentation).
    """

    model: Any  # the family's validated model config dataclass (fer_tune.models.model_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self.seed = coerce("seed", self.seed, int)
        check(
            0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED} (numpy's seeds), got {self.seed}"
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Validate a (possibly sampled) mapping; raises ConfigError naming the first bad key.

        Args:
            d: `model` (required), `train`, `augment`, `seed`; a `provenance` key is ignored.

        Returns:
            The config, every default filled in.

        Raises:
            ConfigError: an unknown key, a missing `model`, or a bad value; the message starts with its
                dotted key path.
        """
        check(isinstance(d, Mapping), "config", f"expected a mapping, got {type(d).__name__}")
        known = ("model", "train", "augment", "seed", *IGNORED_KEYS)
        for key in d:
            check(key in known, str(key), f"unknown key; known keys: {', '.join(known[:4])}")
        check("model" in d, "model", "missing; a run config needs at least `model: {arch: NAME}`")
        check(isinstance(d["model"], Mapping), "model", f"expected a mapping, got {shown(d['model'])}")
        return cls(
            model=model_config(d["model"]),
            train=_group_from_dict(TrainConfig, "train", d.get("train")),
            augment=_group_from_dict(AugmentConfig, "augment", d.get("augment")),
            seed=d.get("seed", 0),
        )

    def override(self, *, seed: int | None = None, **train: Any) -> RunConfig:
        """A copy with `seed` and these `train` keys replaced (None: kept), validated again (warmup_epochs
        must stay below a new epoch count); what the flags of `fer-tune train` and `retrain` change.

        Args:
            seed: the new seed; None keeps this one.
            **train: `train:` keys to replace (`epochs=5`); a None value keeps the current one.

        Returns:
            A new config; this one is unchanged.

        Raises:
            ConfigError: a replaced value is not valid.
        """
        d = self.to_dict()
        d["train"].update({k: v for k, v in train.items() if v is not None})
        if seed is not None:
            d["seed"] = seed
        return RunConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain Python values (every default filled in): YAML- and JSON-safe.

        Returns:
            `{"model": ..., "train": ..., "augment": ..., "seed": ...}`, which `from_dict` reads back.
        """
        return {
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
            "augment": dataclasses.asdict(self.augment),
            "seed": self.seed,
        }

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a run config file; errors name the file.

        Args:
            path: a YAML run config.

        Returns:
            The validated config.

        Raises:
            ConfigError: the file is missing, is not YAML (binary, a key given twice: `read_yaml`), or holds a
                bad config.
        """
        path = Path(path)
        d = read_yaml(path)
        try:
            return cls.from_dict(d or {})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_yaml(self, path: str | Path, header: str = "") -> None:
        """Write the resolved config (a `# header` comment first, when given).

        Args:
            path: the YAML file to write (overwritten).
            header: text written first as `#` comment lines; empty for none.
        """
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if header:
            text = "".join(f"# {line}\n" for line in header.splitlines()) + text
        Path(path).write_text(text)


def as_run_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    """Accept a RunConfig or a mapping (e.g. a Ray Tune sample).

    Args:
        config: a run config, or a mapping for `RunConfig.from_dict`.

    Returns:
        `config` itself, or the validated config of the mapping.

    Raises:
        ConfigError: the mapping is not a valid run config.
    """
    return config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
