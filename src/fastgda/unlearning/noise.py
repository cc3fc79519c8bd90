"""Counter-based noise: the noise for (item, caption, timestep, flip) depends on nothing else.

Method.md §3.6: the before- and after-unlearning losses of a training item must use identical noise. Deriving
each noise tensor from a seed that hashes (base seed, item id, caption, t, flip) makes it independent of
batching and candidate subsets, so the query-independent *before* losses are computed once and cached.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def noise_seed(base_seed: int, item: int, caption: int, t: int, flip: int = 0) -> int:
    """A 63-bit seed that changes completely when any field changes."""
    h = _splitmix64(int(base_seed))
    for field in (item, caption, t, flip):
        h = _splitmix64(h ^ (int(field) & _MASK))
    return h >> 1  # torch seeds must fit in a signed 64-bit integer


def keyed_noise(
    shape: tuple[int, ...], base_seed: int, keys: list[tuple[int, int, int, int]]
) -> torch.Tensor:
    """Standard normal noise, one tensor of ``shape`` per (item, caption, t, flip) key.

    Returns:
        float32 (len(keys), *shape).
    """
    gen = torch.Generator()
    out = torch.empty((len(keys), *shape))
    for row, key in enumerate(keys):
        gen.manual_seed(noise_seed(base_seed, *key))
        out[row] = torch.randn(shape, generator=gen)
    return out
