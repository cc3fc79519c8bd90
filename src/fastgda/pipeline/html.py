"""Self-contained HTML pages (inline SVG charts, inline PNGs): ``report.html`` of a build or the demo, and one
query's attribution page (``fastgda attribute --html``).

The report shows what a run measured.

Sections: the metrics table, quality against speed (one point per method, log-scale queries per second), mAP(L)
curves over L, the leave-K-out counterfactual table with ΔL against speed (when it was run), and query panels
where each method's top-k training images sit beside the query, planted exemplars marked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

PALETTE = ("#0b63ce", "#d1495b", "#2e933c", "#edae49", "#7a5195", "#00798c", "#6c757d", "#ef5675")


@dataclass
class MethodRow:
    """One method's figures: mAP(L) means and standard errors, planted recall, and speed."""

    name: str
    map_mean: dict[int, float]
    map_stderr: dict[int, float]
    planted_recall: float | None = None
    seconds_per_query: float | None = None  # measured; None where not measured


@dataclass
class PanelRow:
    method: str
    ids: list[int]
    scores: list[float]
    images: list[np.ndarray]  # uint8 (H, W, 3) each


@dataclass
class QueryPanel:
    image: np.ndarray  # uint8 (H, W, 3)
    prompt: str
    concept: str | None
    exemplars: set[int] = field(default_factory=set)  # planted exemplars of ``concept``
    rows: list[PanelRow] = field(default_factory=list)


@dataclass
class CounterfactualRow:
    """One method's leave-K-out result: (mean, standard error) over queries of each metric (the error None for
    one query), with its family, cost and storage where they were measured (the papers' Table 1 columns)."""

    name: str
    delta_loss: tuple[float, float | None]
    delta_mse: tuple[float, float | None]
    delta_sim: tuple[float, float | None]
    seconds_per_query: float | None = None
    family: str | None = None  # "unlearning", "influence", "feature", ...
    storage_bytes: int | None = None  # what the method keeps to answer a query
    # ΔL minus the teacher's, paired over the same queries: (mean, standard error of the differences)
    paired_delta_loss: tuple[float, float | None] | None = None


@dataclass
class CounterfactualSection:
    """The counterfactual table's context: K, the queries, and the retrain recipe's length.

    ``teacher``: the row every other is compared with (default: the first whose name starts "teacher")."""

    rows: list[CounterfactualRow]
    k: int
    num_queries: int
    retrain_steps: int
    notes: list[str] = field(default_factory=list)
    teacher: str | None = None

    def teacher_row(self) -> CounterfactualRow | None:
        if self.teacher is not None:
            return next(r for r in self.rows if r.name == self.teacher)
        return next((r for r in self.rows if r.name.startswith("teacher")), None)


def _mean_se(value: tuple[float, float | None], scale: float, signed: bool = False) -> str:
    mean, se = value
    text = f"{mean / scale:+.2f}" if signed else f"{mean / scale:.2f}"
    return text if se is None else f"{text} ± {se / scale:.2f}"


def _storage(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size < 1e8 else f"{size / 1e9:,.2f} GB"


def counterfactual_html(section: CounterfactualSection, num_train: int, colours) -> str:
    """The leave-K-out table (ΔL x1e-3, ΔG-MSE x1e-2, ΔG-sim x1e-1, ΔL as a share of the teacher's; family,
    latency, storage and the paired ΔL difference when rows carry them) and ΔL against queries per second for
    the timed methods."""
    teacher = section.teacher_row()
    rows = section.rows
    # The papers' Table 1 columns appear only where some row measured them (the demo's table has no family).
    optional = [
        ("family", any(r.family for r in rows), lambda r: escape(r.family or "–")),
        ("latency per query", any(r.seconds_per_query for r in rows),
         lambda r: _speed(r.seconds_per_query) if r.seconds_per_query else "–"),
        ("storage", any(r.storage_bytes for r in rows),
         lambda r: _storage(r.storage_bytes) if r.storage_bytes else "–"),
    ]  # fmt: skip
    shown = [(title, cell) for title, present, cell in optional if present]
    paired = any(r.paired_delta_loss for r in rows)
    body = []
    for row in rows:
        cells = "".join(f"<td>{cell(row)}</td>" for _, cell in shown)
        cells += "".join(
            f"<td>{_mean_se(value, scale)}</td>"
            for value, scale in (
                (row.delta_loss, 1e-3),
                (row.delta_mse, 1e-2),
                (row.delta_sim, 1e-1),
            )
        )
        share = (
            f"{row.delta_loss[0] / teacher.delta_loss[0]:.0%}"
            if teacher and teacher.delta_loss[0] > 0
            else "–"
        )
        cells += f"<td>{share}</td>"
        if paired:
            difference = row.paired_delta_loss
            cells += f"<td>{_mean_se(difference, 1e-3, signed=True) if difference else '–'}</td>"
        body.append(f"<tr><th scope='row'>{escape(row.name)}</th>{cells}</tr>")
    head = "".join(f"<th>{title}</th>" for title, _ in shown)
    head += "<th>ΔL ×1e-3</th><th>ΔG-MSE ×1e-2</th><th>ΔG-sim ×1e-1</th><th>ΔL / teacher's</th>"
    head += "<th>ΔL − teacher's ×1e-3 (paired)</th>" if paired else ""
    points = [
        (r.name, 1.0 / r.seconds_per_query, r.delta_loss[0] * 1e3)
        for r in section.rows
        if r.seconds_per_query
    ]
    top = max([p[2] for p in points] + [1e-9])
    chart = speed_scatter_svg(
        points, "ΔL ×1e-3", top * 1.15, colours, "ΔL against queries per second"
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in section.notes)
    return (
        f"<h2>Counterfactual: leave-K-out retraining</h2><p>Each method's top K = {section.k} training images "
        f"({100 * section.k / num_train:.2g}% of N) removed, the model retrained from scratch "
        f"({section.retrain_steps} steps, same seed), on {section.num_queries} test queries; mean ± standard "
        f"error over queries. ΔL and ΔG-MSE: higher means more forgotten; ΔG-sim: lower means more "
        f"forgotten.</p><table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table>"
        f"<div class='charts'><figure>{chart}<figcaption>Counterfactual impact against speed (FastGDA Fig. 1): "
        f"ΔL of each timed method against its queries per second.</figcaption></figure></div>"
        f"<ul class='muted'>{notes}</ul>"
    )


def _svg_axes(width, height, margin, x_label, y_label, x_ticks, y_ticks) -> list[str]:
    """Axis lines, tick labels and titles; ticks are (pixel position, label) pairs."""
    left, right, top, bottom = margin, width - 20, 20, height - margin
    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>',
        f'<text x="{(left + right) / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{(top + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2})">{escape(y_label)}</text>',
    ]
    for x, label in x_ticks:
        parts.append(f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    for y, label in y_ticks:
        parts.append(f'<line x1="{left - 4}" y1="{y}" x2="{right}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{escape(label)}</text>')
    return parts


def _colours(names) -> dict[str, str]:
    """One colour per method, the same in every chart."""
    return {name: PALETTE[n % len(PALETTE)] for n, name in enumerate(names)}


def _speed(seconds: float) -> str:
    per_second = 1 / seconds
    rate = f"{per_second:,.0f}/s" if per_second >= 10 else f"{per_second:.2g}/s"
    return (f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms") + f" ({rate})"


def quality_speed_svg(
    rows: list[MethodRow], L: int, colours: dict[str, str], width=560, height=380, margin=56
) -> str:
    """Scatter: mAP(L) against queries per second (log x), one labelled point per timed method."""
    points = [
        (r.name, 1.0 / r.seconds_per_query, r.map_mean[L]) for r in rows if r.seconds_per_query
    ]
    return speed_scatter_svg(
        points,
        f"mAP(L={L})",
        1.0,
        colours,
        f"mAP(L={L}) against queries per second",
        width,
        height,
        margin,
    )


def speed_scatter_svg(
    points: list[tuple[str, float, float]],
    y_label: str,
    y_max: float,
    colours: dict[str, str],
    title: str,
    width=560,
    height=380,
    margin=56,
) -> str:
    """Scatter of (method, queries per second, value) points: log x, linear y from 0 to ``y_max``."""
    if not points:
        return "<p>No method was timed.</p>"
    low = math.floor(math.log10(min(p[1] for p in points))) - 0.3
    high = math.ceil(math.log10(max(p[1] for p in points))) + 0.3
    left, right, top, bottom = margin, width - 20, 20, height - margin

    def x_of(qps):
        return left + (math.log10(qps) - low) / (high - low) * (right - left)

    def y_of(value):
        return bottom - max(value, 0.0) / y_max * (bottom - top)

    x_ticks = [(x_of(10.0**e), f"{10.0**e:g}") for e in range(math.ceil(low), math.floor(high) + 1)]
    y_ticks = [(y_of(v), f"{v:.2g}") for v in np.linspace(0, y_max, 6)]
    parts = _svg_axes(width, height, margin, "queries per second (log)", y_label, x_ticks, y_ticks)
    labels = []
    for name, qps, value in points:
        x, y = x_of(qps), y_of(value)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colours[name]}"/>')
        anchor = "end" if x > width * 0.7 else "start"
        labels.append((name, x + (-9 if anchor == "end" else 9), y - 8, anchor))
    for name, x, y, anchor in _spread_labels(labels):
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(name)}</text>')
    return _svg(width, height, parts, title)


def _spread_labels(labels, line=13.0, char_width=6.5):
    """(name, x, y, anchor) labels moved down, top first, until no two overlap: methods of one family often
    share a latency and nearly a score, and their names would print over each other."""
    placed = []
    for name, x, y, anchor in sorted(labels, key=lambda label: label[2]):
        extent = len(name) * char_width
        span = (x, x + extent) if anchor == "start" else (x - extent, x)
        while any(
            abs(y - other_y) < line and span[0] < other_span[1] and other_span[0] < span[1]
            for other_y, other_span in placed
        ):
            y += line
        placed.append((y, span))
        yield name, x, y, anchor


def map_curves_svg(
    curves: dict[str, list[tuple[int, float]]],
    num_train: int,
    colours: dict[str, str],
    width=560,
    height=380,
    margin=56,
) -> str:
    """Lines of mAP(L) against L (log x), one per method."""
    all_l = sorted({L for points in curves.values() for L, _ in points})
    low, high = math.log10(all_l[0]), math.log10(all_l[-1])
    left, right, top, bottom = margin, width - 170, 20, height - margin

    def x_of(L):
        return left + (math.log10(L) - low) / max(high - low, 1e-9) * (right - left)

    def y_of(value):
        return bottom - value * (bottom - top)

    x_ticks = [(x_of(L), str(L)) for L in all_l]
    y_ticks = [(y_of(v), f"{v:.1f}") for v in np.linspace(0, 1, 6)]
    parts = _svg_axes(
        width, height, margin, f"L (teacher's top-L as positives, N = {num_train})", "mAP(L)",
        x_ticks, y_ticks,
    )  # fmt: skip
    for n, (name, points) in enumerate(curves.items()):
        colour = colours[name]
        path = " ".join(f"{x_of(L):.1f},{y_of(v):.1f}" for L, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(
            f'<rect x="{right + 12}" y="{24 + 18 * n}" width="12" height="12" fill="{colour}"/>'
        )
        parts.append(f'<text x="{right + 30}" y="{34 + 18 * n}">{escape(name)}</text>')
    return _svg(width, height, parts, "mAP(L) against L")


def _svg(width, height, parts, title) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'font-family="system-ui, sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )


def metrics_table_html(rows: list[MethodRow], ls: list[int], num_train: int) -> str:
    head = "".join(f"<th>mAP(L={L}, {100 * L / num_train:.2g}% of N)</th>" for L in ls)
    body = []
    for row in rows:
        cells = "".join(f"<td>{row.map_mean[L]:.3f} ± {row.map_stderr[L]:.3f}</td>" for L in ls)
        recall = "–" if row.planted_recall is None else f"{row.planted_recall:.2f}"
        speed = _speed(row.seconds_per_query) if row.seconds_per_query else "–"
        body.append(
            f"<tr><th scope='row'>{escape(row.name)}</th>{cells}<td>{recall}</td><td>{speed}</td></tr>"
        )
    return (
        f"<table><thead><tr><th>method</th>{head}<th>planted recall</th><th>time per query</th></tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table>"
    )


def panel_html(panel: QueryPanel) -> str:
    concept = (
        f" · planted concept <b>{escape(panel.concept)}</b> (★ marks its exemplars)"
        if panel.concept
        else ""
    )
    rows = []
    for row in panel.rows:
        cards = "".join(
            f"<figure class='{'exemplar' if i in panel.exemplars else ''}'>"
            f"<img src='{png_data_uri(image, 64)}' alt='training image {i}'>"
            f"<figcaption>{'★ ' if i in panel.exemplars else ''}{i}<br>{score:.3g}</figcaption></figure>"
            for i, score, image in zip(row.ids, row.scores, row.images, strict=True)
        )
        rows.append(f"<div class='row'><h4>{escape(row.method)}</h4>{cards}</div>")
    return (
        f"<section class='panel'><figure class='query'><img src='{png_data_uri(panel.image, 128)}' "
        f"alt='query image'><figcaption>{escape(panel.prompt)}{concept}</figcaption></figure>"
        f"{''.join(rows)}</section>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#1d1d1f;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th[scope=row],thead th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:2em}
.panel{border-top:1px solid #ddd;padding:1em 0}
.panel .query{display:flex;align-items:center;gap:1em;margin:0 0 .5em}
.panel img{image-rendering:pixelated}
.row{display:flex;align-items:flex-start;gap:6px;flex-wrap:wrap}
.row h4{width:190px;margin:0;font-size:13px}
.row figure{margin:0;width:68px;font-size:11px;text-align:center}
.row figure img{width:64px;height:64px;border:2px solid transparent}
.row figure.exemplar img{border-color:#d1495b}
.muted{color:#555}
"""


def render_report(
    title: str,
    summary: list[str],
    rows: list[MethodRow],
    ls: list[int],
    num_train: int,
    curves: dict[str, list[tuple[int, float]]],
    panels: list[QueryPanel],
    notes: list[str],
    counterfactual: CounterfactualSection | None = None,
) -> str:
    """The whole page as one HTML string (no external resources)."""
    mid = ls[len(ls) // 2]
    names = [row.name for row in rows] + list(curves)
    names += [r.name for r in counterfactual.rows] if counterfactual else []
    colours = _colours(list(dict.fromkeys(names)))
    return _page(
        title,
        summary,
        f"<h2>Agreement with the teacher</h2>{metrics_table_html(rows, ls, num_train)}"
        f"<div class='charts'><figure>{quality_speed_svg(rows, mid, colours)}<figcaption>Quality against speed "
        f"(like FastGDA Fig. 1): each timed method's mAP(L={mid}) against queries per second.</figcaption>"
        f"</figure><figure>{map_curves_svg(curves, num_train, colours)}<figcaption>mAP(L) over L.</figcaption>"
        f"</figure></div>"
        f"{counterfactual_html(counterfactual, num_train, colours) if counterfactual else ''}"
        f"<h2>Queries and their top training images</h2>"
        f"{''.join(panel_html(p) for p in panels)}",
        notes,
    )


def render_counterfactual_report(
    title: str, summary: list[str], section: CounterfactualSection, num_train: int, notes: list[str]
) -> str:
    """A page with the leave-K-out table and its chart only (``benchmarks/method_comparison.py``'s Table 1)."""
    colours = _colours([row.name for row in section.rows])
    return _page(title, summary, counterfactual_html(section, num_train, colours), notes)


def _page(title: str, summary: list[str], body: str, notes: list[str]) -> str:
    """A self-contained page: title, summary lines, ``body`` (HTML), then notes."""
    summary_html = "".join(f"<li>{escape(line)}</li>" for line in summary)
    notes_html = "".join(f"<li>{escape(line)}</li>" for line in notes)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1><ul>{summary_html}</ul>{body}"
        f"<h2>Notes</h2><ul class='muted'>{notes_html}</ul></body></html>"
    )


def png_data_uri(image: np.ndarray, size: int = 96) -> str:
    """A uint8 image (H, W, 3) as an inline PNG data URI about ``size`` pixels wide: small pixel art upscaled
    (nearest, so its pixels stay visible), a photo larger than that shrunk (so a page of them stays small)."""
    import base64
    import io

    from PIL import Image

    picture = Image.fromarray(image)
    if image.shape[1] > size:
        picture.thumbnail(
            (size, size * image.shape[0] // image.shape[1] + 1), Image.Resampling.LANCZOS
        )
        big = picture
    else:
        scale = max(1, size // image.shape[1])
        big = picture.resize(
            (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
        )
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attribution_html(
    query_image: np.ndarray, prompt: str, attributions, images: list[np.ndarray]
) -> str:
    """A self-contained page: the query beside its top-k training images with scores, shares and captions."""
    cards = "".join(
        f'<figure><img src="{png_data_uri(img)}" alt="training image {a.id}">'
        f"<figcaption><b>#{rank} · id {a.id}</b><br>score {a.score:.3f} · share {100 * a.share:.1f}%<br>"
        f"{escape(a.captions[0]) if a.captions else ''}</figcaption></figure>"
        for rank, (a, img) in enumerate(zip(attributions, images, strict=True), start=1)
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fastgda attribution</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "figure{display:inline-block;width:150px;margin:0 12px 16px 0;vertical-align:top}"
        "img{image-rendering:pixelated;width:96px;height:96px;border:1px solid #ccc}"
        "figcaption{font-size:12px}.query img{width:160px;height:160px}</style></head><body>"
        f"<h1>Which training images made this?</h1><div class='query'><figure>"
        f"<img src='{png_data_uri(query_image, 160)}' alt='query image'><figcaption><b>query</b><br>"
        f"{escape(prompt)}</figcaption></figure></div><h2>Top {len(attributions)} training images</h2>"
        f"{cards}</body></html>"
    )
