"""The fast query path: a frozen encoder's network exported to ONNX once and run by ONNX Runtime on a CPU.

The torch encoder stays the reference and the fallback. An export is cached under the fastgda cache folder, keyed
by the encoder's config, its weights and the torch version, written under a temporary name and renamed; every
session checks its graph against torch on the export's example inputs before it serves (agreement to 1e-4 of the
output's scale, else ``FastGDAError``), so a wrong export never answers a query.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import FastGDAError

RUNTIMES = ("torch", "onnx", "auto")
RUNTIME_HELP = (
    "torch (the reference), onnx (ONNX Runtime, CPU), or auto: onnx on a CPU when it is installed"
)
EXPORT_TOLERANCE = 1e-4  # of the largest output magnitude; exports measured agree to about 1e-6


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: torch.device, dtype: torch.dtype) -> str:
    """``torch`` or ``onnx`` for a requested runtime on a device and precision.

    Raises:
        FastGDAError: an unknown runtime, or ``onnx`` where it cannot run (not installed, not a CPU, not float32).
    """
    if runtime not in RUNTIMES:
        raise FastGDAError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    fits = device.type == "cpu" and dtype == torch.float32
    if runtime == "auto":
        return "onnx" if fits and onnx_available() else "torch"
    if runtime == "onnx" and not fits:
        raise FastGDAError(
            f"the onnx runtime serves float32 on a CPU; this extractor runs {dtype} on {device}: use --runtime torch"
        )
    if runtime == "onnx" and not onnx_available():
        raise FastGDAError(
            "the onnx runtime needs the packages onnx and onnxruntime; install them with: pip install 'fastgda[onnx]'"
        )
    return runtime


class OnnxEncoderSession:
    """One encoder's network under ONNX Runtime.

    Args:
        module: the torch network (inputs -> output (B, D)), in eval mode.
        example: example input tensors (also the export's shapes; batch and sequence axes stay dynamic).
        names: the inputs' names; ``dynamic``: input name -> {axis: name} of its dynamic axes.
        key: what identifies the network (encoder config, weights digest); names the cached export.
        threads: ONNX Runtime's intra-op threads.
    """

    def __init__(
        self, module, example: tuple, names: list[str], dynamic: dict, key: dict, threads: int = 1
    ):
        import onnxruntime

        from .._artifacts import cache_dir

        digest = hashlib.sha256(
            json.dumps({**key, "torch": torch.__version__}, sort_keys=True).encode()
        ).hexdigest()[:16]
        path = cache_dir() / "onnx" / f"{key.get('name', 'encoder')}-{digest}.onnx"
        if not path.is_file():
            _export(module, example, names, dynamic, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.names, self.path = names, path
        with torch.no_grad():
            expected = module(*example).float().numpy()
        got = self(*[t.numpy() for t in example])
        scale = float(np.abs(expected).max()) or 1.0
        drift = float(np.abs(got - expected).max())
        if drift > EXPORT_TOLERANCE * scale:
            raise FastGDAError(
                f"the ONNX export {path} disagrees with torch by {drift:.2e} (scale {scale:.2e}); delete it to "
                "export again, or use the torch runtime"
            )

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        """Inputs as numpy arrays in ``names`` order -> float32 (B, D)."""
        feed = dict(zip(self.names, inputs, strict=True))
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def _export(module, example: tuple, names: list[str], dynamic: dict, path: Path) -> None:
    """torch -> ONNX at a temporary name, then renamed (a crash never leaves half a graph)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the exporter's tracer warnings describe shapes fixed by design
        torch.onnx.export(
            module, example, str(tmp), input_names=names, output_names=["features"],
            dynamic_axes=dynamic, dynamo=False,
        )  # fmt: skip
    os.replace(tmp, path)
