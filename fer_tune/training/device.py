"""Where a run trains and in which precision: device checks, the memory cap of packed trials, autocast.

Every CUDA call fer-tune makes before training goes through here, so the GPU branches can be tested on a
machine without a GPU by faking `torch.cuda` at this boundary (`tests/fake_cuda.py`).

- `resolve_device`: the device a user asked for, checked (`--device cuda` without CUDA is one line).
- `trial_device`: what a Ray trial trains on. A trial that Ray gave a GPU trains on it or fails; it never
  falls back to the CPU silently. `FER_TUNE_TRIAL_DEVICE=cpu` says so explicitly (GPU scheduling tests on
  machines without CUDA).
- `cap_memory`: a packed trial (a share of a GPU) caps its caching allocator at its share times
  `MEMORY_SAFETY`, so that the caps of the trials sharing a GPU never sum over 100% and leave room for each
  process's CUDA context and cuDNN workspace, which the cap does not cover.
- `Precision`: bf16 autocast where the GPU has native bf16 (compute capability >= 8), fp16 autocast with a
  gradient scaler on older GPUs (T4, V100), fp32 when asked and on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fer_tune.base import ConfigError, DeviceError

MEMORY_SAFETY = 0.9  # a packed trial's memory cap = its GPU share x this
TRIAL_DEVICE_ENV = "FER_TUNE_TRIAL_DEVICE"


def _no_cuda_reason() -> str:
    build = torch.version.cuda
    if build is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {build}) finds no usable GPU or driver"


def cuda_device(index: int | None = None) -> torch.device:
    """An indexed CUDA device (the current one by default); DeviceError when CUDA is unusable.

    Args:
        index: the CUDA device index; None for the current device.

    Returns:
        `cuda:<index>`.

    Raises:
        DeviceError: CUDA is not usable, or no device has that index.
    """
    if not torch.cuda.is_available():
        raise DeviceError(f"CUDA asked for, but {_no_cuda_reason()}")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if index is None else index
    if not 0 <= index < count:
        raise DeviceError(f"cuda:{index} asked for, but torch sees {count} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device (cuda devices checked and indexed), else cuda:N when available, else cpu.

    Args:
        device: `cpu`, `cuda`, `cuda:1` or a torch device; None to pick CUDA when available.

    Returns:
        The device; a CUDA device always carries its index.

    Raises:
        DeviceError: not a device name, a device other than cpu or cuda, or CUDA asked for and unusable.
    """
    if device is None:
        return cuda_device() if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"--device {device!r}: not a device (cpu, cuda, cuda:1): {e}") from None
    if dev.type == "cuda":
        try:
            return cuda_device(dev.index)
        except DeviceError as e:
            raise DeviceError(f"--device {device}: {e}") from None
    if dev.type != "cpu":
        raise DeviceError(f"--device {device}: fer-tune trains on cpu or cuda")
    return dev


def trial_device(gpus_per_trial: float) -> torch.device:
    """A Ray trial's device given `gpus_per_trial` GPUs: its GPU or a one-line error, never a silent CPU.

    Args:
        gpus_per_trial: the GPUs (or share of one) Ray gave the trial; 0 for a CPU trial.

    Returns:
        The device from `$FER_TUNE_TRIAL_DEVICE` when set, else the trial's GPU, or the CPU for 0 GPUs.

    Raises:
        DeviceError: the trial was given a GPU but CUDA is unusable.
    """
    override = os.environ.get(TRIAL_DEVICE_ENV)
    if override:
        return resolve_device(override)
    if gpus_per_trial <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        raise DeviceError(
            f"this trial was given {gpus_per_trial:g} GPU (CUDA_VISIBLE_DEVICES={visible!r}) but "
            f"{_no_cuda_reason()}; fix the CUDA install, or run the search with --gpus 0"
        )
    return cuda_device()


def check_gpu_count(asked: float) -> None:
    """`--gpus N` on a machine where torch sees fewer: one line, before Ray starts.

    Args:
        asked: the `--gpus` value.

    Raises:
        DeviceError: torch sees fewer CUDA devices than asked for.
    """
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if asked > seen:
        why = "" if seen else f" ({_no_cuda_reason()})"
        raise DeviceError(f"--gpus {asked:g}: torch sees {seen} CUDA device(s){why}; use --gpus {seen}")


def memory_cap(share: float) -> float:
    """The fraction of its GPU's memory a trial holding `share` of that GPU may allocate.

    Args:
        share: the trial's share of its GPU (0.5: two trials per GPU); above 1 counts as 1.

    Returns:
        `share` times `MEMORY_SAFETY`.
    """
    return min(1.0, share) * MEMORY_SAFETY


def cap_memory(device: torch.device, share: float | None) -> float | None:
    """Cap this process's CUDA caching allocator for a packed trial (`share` < 1); returns the cap set.

    Args:
        device: the trial's device; nothing is capped off CUDA.
        share: the trial's share of the GPU; None or >= 1 for a whole GPU (no cap).

    Returns:
        The fraction of the GPU's memory set as the cap, or None when none was set.
    """
    if device.type != "cuda" or share is None or share >= 1:
        return None
    cap = memory_cap(share)
    torch.cuda.set_per_process_memory_fraction(cap, cuda_device(device.index))
    return cap


def setup_device(
    device: str | torch.device | None, precision: str, gpu_share: float | None = None
) -> tuple[torch.device, Precision]:
    """The trainable's device set-up: checked device, resolved precision, cuDNN autotuning, memory cap.

    Args:
        device: as for `resolve_device`; None to pick CUDA when available.
        precision: `train.precision`: `auto`, `bf16`, `fp16` or `fp32`.
        gpu_share: the trial's share of its GPU, for the memory cap; None for a whole GPU.

    Returns:
        (the device, the resolved precision).

    Raises:
        DeviceError: the device cannot be used.
        ConfigError: bf16 asked for on a GPU without native bf16.
    """
    dev = resolve_device(device)
    amp = Precision.select(precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuned kernels pay off
        cap_memory(dev, gpu_share)
    return dev, amp


# oneDNN's ISA names (its docs' `ONEDNN_MAX_CPU_ISA` values) from the first that multiplies bf16 in hardware
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512", "AVX10_2_512")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX (Xeon 4th gen on) or AVX512-BF16 (AMD Zen 4 on).

    There, bf16 autocast trained the CPU models 2-3.4x faster than fp32 (measured on this project's CPUs: a
    Xeon with AMX, an AMD EPYC with AVX512-BF16); without either, oneDNN emulates bf16 and fp32 is faster.

    `ONEDNN_MAX_CPU_ISA` below AVX512_CORE_BF16 (oneDNN's own cap on the instructions it uses; AVX2 also
    stands in for an AVX2-only machine) counts as no native bf16: oneDNN then emulates it, and a bf16 training
    step of the cpu space's VGG ran at 37 images/s against fp32's 547 on an EPYC capped at AVX2.

    Returns:
        False also when this torch cannot tell.
    """
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in ("ALL", "DEFAULT") and not isa.startswith(_BF16_ISAS):
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch: no capability query, no guess
        return False
    return bool(caps.get("amx_bf16", False) or caps.get("avx512_bf16", False))


@dataclass(frozen=True)
class Precision:
    """How forward passes run: autocast dtype (None: fp32) and whether losses are scaled (fp16).

    Args:
        name: `bf16`, `fp16` or `fp32`: what `auto` resolved to.
        device_type: `cuda` or `cpu`, for autocast.
        dtype: the autocast dtype; None for fp32 (no autocast).
    """

    name: str  # bf16 | fp16 | fp32: what `auto` resolved to
    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def select(cls, precision: str, device: torch.device) -> Precision:
        """Resolve `train.precision` for a device; bf16 on a GPU without native bf16 is a ConfigError.

        Args:
            precision: `auto`, `bf16`, `fp16` or `fp32`.
            device: the device the run trains on.

        Returns:
            The precision; `auto` gives bf16 on GPUs of compute capability >= 8 and on CPUs with AMX or
            AVX512-BF16, fp16 on older GPUs, else fp32.

        Raises:
            ConfigError: bf16 on a GPU of compute capability below 8.
        """
        if device.type != "cuda":
            name = ("bf16" if cpu_has_native_bf16() else "fp32") if precision == "auto" else precision
        else:
            major, minor = torch.cuda.get_device_capability(device)
            native_bf16 = major >= 8
            name = ("bf16" if native_bf16 else "fp16") if precision == "auto" else precision
            if name == "bf16" and not native_bf16:
                raise ConfigError(
                    f"train.precision: bf16 needs a GPU of compute capability >= 8.0 "
                    f"({torch.cuda.get_device_name(device)} is {major}.{minor}); use fp16 or auto"
                )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
        return cls(name, device.type, dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context to run forward passes in.

        Returns:
            `torch.autocast` at `dtype`, or a context that does nothing for fp32.
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> Any:
        """A gradient scaler for fp16 (its small range underflows gradients), else None.

        Returns:
            A `torch.amp.GradScaler` for fp16, else None.
        """
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """numpy -> tensor on device with no host copy; read-only arrays (Ray's object store) are accepted.

    The tensors made here are only ever read, so sharing a non-writable buffer is safe; torch's warning
    about it is silenced rather than paid for with a copy of the whole split.

    Args:
        a: the array; copied only when not contiguous.
        device: where the tensor goes.

    Returns:
        The tensor (it shares `a`'s memory on the CPU).
    """
    a = np.ascontiguousarray(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a).to(device)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC batches: faster convolutions on CUDA, and measured 2-4x faster on this project's CPUs (oneDNN).

    Args:
        x: a (B, C, H, W) batch.

    Returns:
        The same values in channels-last memory order.
    """
    return x.contiguous(memory_format=torch.channels_last)
