"""Which torch device runs a model: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.

The teacher's data stays in host memory (the training set's encoding can be larger than a GPU's memory); each
batch moves to the model's device, and results come back to the host. Keyed noise is drawn on the CPU and
moved, so a query's noise has the same bits on every device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError, FastGDAError

# torch is imported where a device is resolved, so the CLI's parser starts without it.
if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when present, else cpu), cpu, cuda or cuda:N"


class DeviceUnavailableError(FastGDAError):
    """The requested device does not exist on this machine or in this torch build."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``spec`` (``DEVICE_HELP``), checked against this machine.

    Raises:
        ConfigError: ``spec`` names no device kind fastgda runs on.
        DeviceUnavailableError: the device is not here (no CUDA, or fewer GPUs than the index).
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}; use {DEVICE_HELP}") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device {spec!r} is not supported; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {spec!r} was asked for, but this torch ({torch.__version__}) sees no CUDA device "
            "(a CPU-only build, or no GPU visible); use --device cpu, or install a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceUnavailableError(
            f"device {spec!r} was asked for, but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})"
        )
    return device
