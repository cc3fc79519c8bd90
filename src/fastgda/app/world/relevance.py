"""Attribute overlap between two scenes: a cheap relevance proxy for attributions on the shapes world.

A training image that shares a query's colour, shape, size, position and background is a plausible influence;
one that shares nothing is not. The overlap is not ground truth (the teacher and counterfactuals are) but it
lets a report say *why* a top-ranked image is there, and it separates settings that planted recall cannot.
"""

from __future__ import annotations

OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")


def attribute_overlap(query: dict, item: dict) -> float:
    """Share of the query's attributes an item matches, in [0, 1].

    Each query object is matched to its best item object on (shape, colour, size, position); the background
    counts as one more attribute. Scenes are the world's JSON form: ``{"background", "objects": [...]}``.
    """
    per_object = [
        max(sum(q[a] == o[a] for a in OBJECT_ATTRIBUTES) for o in item["objects"])
        for q in query["objects"]
    ]
    matched = sum(per_object) + (query["background"] == item["background"])
    return matched / (len(OBJECT_ATTRIBUTES) * len(query["objects"]) + 1)
