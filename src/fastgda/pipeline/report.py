"""What ``report.html`` says of a run: one table row per method, the query panels, the page. The build and the
demo both write theirs through ``write_report``; the page itself is drawn by ``fastgda.pipeline.html``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._artifacts import write_text_atomic

TEACHER_NAME = "teacher (AbU+)"
CURVE_FRACTIONS = (
    0.002,
    0.0042,
    0.0085,
    0.017,
    0.034,
    0.068,
)  # shares of N where the mAP(L) curves are drawn


def method_rows(evaluation, seconds: dict[str, float], recall: dict | None = None) -> list:
    """The teacher's row (its own rankings: mAP 1) then each evaluated method's, with the measured seconds per
    query of those timed and planted recall where ``recall`` (``Evaluation.planted_recall``) is given."""
    from .html import MethodRow

    ls = evaluation.ls
    teacher_recall = recall["teacher"][0] if recall else None
    rows = [MethodRow(TEACHER_NAME, dict.fromkeys(ls, 1.0), dict.fromkeys(ls, 0.0), teacher_recall,
                      seconds.get(TEACHER_NAME))]  # fmt: skip
    for name, table in evaluation.map.items():
        rows.append(
            MethodRow(
                name,
                {L: table[L]["mean"] for L in ls},
                {L: table[L]["stderr"] for L in ls},
                recall[name][0] if recall else None,
                seconds.get(name),
            )
        )
    return rows


def query_panels(
    test,
    evaluation,
    methods: Sequence[str],
    query_ids: Sequence[int],
    query_image: Callable[[int], np.ndarray],
    query_prompt: Callable[[int], str],
    item_image: Callable[[int], np.ndarray],
    num_train: int,
    concept_of: Callable[[int], str | None] = lambda q: None,
    exemplars: dict[str, list[int]] | None = None,
    top: int = 10,
) -> list:
    """One panel per query of ``query_ids``: its image and prompt above the teacher's top-``top`` training
    images and each of ``methods``' (names in ``evaluation.scores``), planted exemplars of its concept marked.

    ``test``: the test ``GroundTruth`` (full rankings, or pools when ``evaluation.pools`` is set);
    ``query_image``/``query_prompt``/``item_image`` read one image or prompt by id, so only the images shown are
    decoded.
    """
    from ..evaluation import teacher_scores
    from .html import PanelRow, QueryPanel

    pools = evaluation.pools  # (Q, K) ids of each query's pool: scores are then over pool positions
    teacher = test.scores if pools is not None else teacher_scores(test, num_train)
    panels = []
    for q in query_ids:
        row = int(np.flatnonzero(test.query_ids == q)[0])
        concept = concept_of(int(q))
        marked = set((exemplars or {}).get(concept, [])) if concept else set()
        panel = QueryPanel(thumbnail(query_image(int(q))), query_prompt(int(q)), concept, marked)
        scored = [(TEACHER_NAME, teacher[row])]
        scored += [(name, evaluation.scores[name][row]) for name in methods]
        for name, scores in scored:
            best = np.argsort(-scores, kind="stable")[:top]
            ids = best if pools is None else pools[row][best]
            images = [thumbnail(item_image(int(i))) for i in ids]
            panel.rows.append(PanelRow(name, ids.tolist(), scores[best].tolist(), images))
        panels.append(panel)
    return panels


def write_report(
    path: Path,
    title: str,
    summary: list[str],
    evaluation,
    seconds: dict[str, float],
    panels: list,
    notes: list[str],
    num_train: int,
    recall: dict | None = None,
    counterfactual=None,
    curve_fractions: Sequence[float] = CURVE_FRACTIONS,
) -> None:
    """``report.html`` at ``path``: the summary lines, the metrics table, the quality-speed and mAP(L) charts,
    the counterfactual section (a ``CounterfactualSection``, when given), the query panels and the notes."""
    from .html import render_report

    curves = {name: evaluation.curve(name, curve_fractions) for name in evaluation.scores}
    rows = method_rows(evaluation, seconds, recall)
    html = render_report(
        title, summary, rows, evaluation.ls, num_train, curves, panels, notes, counterfactual
    )
    write_text_atomic(path, html)


def thumbnail(image: np.ndarray, size: int = 96) -> np.ndarray:
    """The image at most ``size`` pixels a side: the report inlines every image."""
    from PIL import Image

    if max(image.shape[:2]) <= size:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return np.asarray(picture)
