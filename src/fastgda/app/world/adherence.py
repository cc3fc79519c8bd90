"""Prompt adherence: does a generated image show the attributes its prompt names? Scored by the probe."""

from __future__ import annotations

import numpy as np

from .probe import ATTRIBUTES, AttributeProbe, scene_labels


def score_adherence(probe: AttributeProbe, images: np.ndarray, scenes: list) -> dict[str, float]:
    """Share of generated images (B, 16, 16, 3) whose probed attribute matches the prompt's, per attribute.

    ``all`` is the share with every attribute right at once.
    """
    predicted = probe.predict(images)
    wanted = [scene_labels(s) for s in scenes]
    hits = {
        name: np.array([p == w[name] for p, w in zip(predicted[name], wanted, strict=True)])
        for name in ATTRIBUTES
    }
    result = {name: float(h.mean()) for name, h in hits.items()}
    result["all"] = float(np.logical_and.reduce(list(hits.values())).mean())
    return result


def measure_adherence(
    model,
    probe: AttributeProbe,
    prompts: list[dict],
    seeds_per_prompt: int = 4,
    guidance_scale: float = 1.0,
    num_steps: int = 50,
    batch_size: int = 128,
) -> dict[str, float]:
    """Sample every held-out prompt with seeds 1000.. (deterministic DDIM) and score the images.

    Args:
        model: a ``TextToImageModel`` generating 16x16 images.
        prompts: records with ``"prompt"`` and single-object ``"scene"`` (``world.held_out_prompts``).
    """
    records = [(p, 1000 + s) for s in range(seeds_per_prompt) for p in prompts]
    images = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        x0 = model.sample(
            [p["prompt"] for p, _ in batch], [s for _, s in batch], num_steps, guidance_scale
        )
        images.append(model.decode(x0))
    return score_adherence(probe, np.concatenate(images), [p["scene"] for p, _ in records])
