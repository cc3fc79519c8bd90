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


DTYPE_HELP = (
    "float32 (default), bfloat16 or float16: the precision models and encoders compute in, under autocast; "
    "weights, Fisher accumulations and loss differences stay float32"
)
DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(spec: str | torch.dtype | None = "float32") -> torch.dtype:
    """The compute dtype for ``spec`` (one of ``DTYPES``).

    Raises:
        ConfigError: ``spec`` is not one of them.
    """
    import torch

    if isinstance(spec, torch.dtype):
        spec = str(spec).removeprefix("torch.")
    spec = (spec or "float32").strip().lower()
    if spec not in DTYPES:
        raise ConfigError(f"unknown dtype {spec!r}; use {', '.join(DTYPES)}")
    return getattr(torch, spec)


def autocast(device: torch.device | str, dtype: torch.dtype):
    """A context that runs eligible ops (matmuls, convolutions) in ``dtype`` on ``device``; a no-op at float32.

    torch's autocast keeps reductions, norms and softmax in float32 and leaves the weights float32, so gradients
    and optimiser state stay full precision.
    """
    import contextlib

    import torch

    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Bytes free on a CUDA device right now, or ``None`` on the CPU (host memory is not the limit there)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def batch_size_for_memory(
    free_bytes: int | None,
    bytes_per_item: float,
    default: int,
    cap: int = 4096,
    headroom: float = 0.8,
) -> int:
    """The largest batch that fits ``headroom`` of ``free_bytes`` at ``bytes_per_item``, in [1, cap].

    ``free_bytes`` ``None`` (the CPU) gives ``default``: on a CPU throughput barely depends on the batch.
    """
    if free_bytes is None:
        return default
    fit = int(free_bytes * headroom // max(bytes_per_item, 1.0))
    return max(1, min(cap, fit))


def measure_bytes_per_item(step, device: torch.device | str, probe: int = 2) -> float | None:
    """Peak device memory one item of ``step(batch_size)`` adds, from runs at 1 and ``probe`` items.

    ``None`` on the CPU. ``step`` runs the work (forward, or forward and backward) at the batch size it is given.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    peaks = []
    for size in (1, probe):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(size)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return max((peaks[1] - peaks[0]) / (probe - 1), peaks[0] / 2, 1.0)
