"""report.html: self-contained, and it renders in a real headless Chromium (screenshot kept)."""

import re

import numpy as np
import pytest

from fastgda.pipeline.html import (
    CounterfactualRow,
    CounterfactualSection,
    MethodRow,
    PanelRow,
    QueryPanel,
    render_counterfactual_report,
    render_report,
    speed_scatter_svg,
)

LS = [8, 17, 68]


def sample_counterfactual() -> CounterfactualSection:
    rows = [
        CounterfactualRow("teacher (AbU+)", (0.004, 0.0005), (0.02, 0.003), (0.9, 0.01), 40.0),
        CounterfactualRow("fastgda ranker", (0.0036, 0.0004), (0.018, 0.003), (0.91, 0.01), 0.02),
        CounterfactualRow("untuned image (effnet)", (0.001, 0.0003), (0.01, 0.002), (0.95, 0.01)),
        CounterfactualRow("random", (0.0001, 0.0001), (0.002, 0.001), (0.99, 0.005)),
    ]  # fmt: skip
    return CounterfactualSection(rows, k=68, num_queries=8, retrain_steps=400, notes=["a caveat"])


def sample_report(rng, counterfactual: CounterfactualSection | None = None) -> str:
    rows = [
        MethodRow("teacher (AbU+)", {L: 1.0 for L in LS}, {L: 0.0 for L in LS}, 1.0, 40.0),
        MethodRow("fastgda ranker", {8: 0.4, 17: 0.45, 68: 0.5}, {L: 0.03 for L in LS}, 0.8, 0.02),
        MethodRow("untuned text (minilm)", {8: 0.3, 17: 0.35, 68: 0.35}, {L: 0.03 for L in LS}, 0.7, 0.015),
        MethodRow("random", {8: 0.004, 17: 0.009, 68: 0.034}, {L: 0.001 for L in LS}, 0.01),
    ]  # fmt: skip
    curves = {r.name: [(L, r.map_mean[L]) for L in LS] for r in rows[1:]}
    image = lambda: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)  # noqa: E731
    panels = []
    for concept in ["zigzag", None]:
        panel = QueryPanel(
            image(), f"a prompt about {concept}", concept, {3, 5} if concept else set()
        )
        for name in ["teacher (AbU+)", "fastgda ranker", "untuned text (minilm)"]:
            ids = list(range(1, 11))
            panel.rows.append(PanelRow(name, ids, [1.0 / i for i in ids], [image() for _ in ids]))
        panels.append(panel)
    return render_report(
        "test report", ["one line"], rows, LS, 2000, curves, panels, ["a note"], counterfactual
    )


def test_the_report_is_self_contained(rng):
    html = sample_report(rng)
    assert not re.search(r"""(src|href)=["']?https?:""", html)  # no external resources
    assert html.count("<svg") == 2 and html.count("<circle") == 3  # the three timed methods
    assert html.count("class='exemplar'") == 6  # ids 3 and 5 in each of the planted panel's 3 rows
    assert "0.450 ± 0.030" in html


def test_the_counterfactual_section_shows_the_table_and_delta_loss_against_speed(rng):
    html = sample_report(rng, sample_counterfactual())
    assert "leave-K-out" in html and "K = 68 training images (3.4% of N)" in html
    assert "3.60 ± 0.40" in html  # the ranker's ΔL x1e-3
    assert "<td>90%</td>" in html  # its share of the teacher's ΔL
    assert (
        html.count("<svg") == 3 and html.count("<circle") == 3 + 2
    )  # only timed methods are plotted
    assert "a caveat" in html


def test_a_method_comparison_page_has_the_papers_table_1_columns():
    """Family, latency and storage where measured, the paired ΔL difference, and no ± for one query."""
    rows = [
        CounterfactualRow("AbU+ α = 1e-2", (7e-4, 3e-4), (2e-3, 1e-3), (0.92, 0.03), 52.0,
                          "unlearning", 3_000_000),
        CounterfactualRow("D-TRAK", (4e-4, 3e-4), (1e-3, 7e-4), (0.93, 0.03), 0.5, "influence",
                          250_000_000, (-3e-4, 4e-5)),
        CounterfactualRow("random", (-6e-5, None), (5e-4, None), (0.957, None), family="–",
                          paired_delta_loss=(-7.5e-4, None)),
    ]  # fmt: skip
    section = CounterfactualSection(rows, 68, 12, 400, teacher="AbU+ α = 1e-2")
    html = render_counterfactual_report("comparison", ["N = 2,000"], section, 2000, ["a note"])
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    assert "<th>family</th><th>latency per query</th><th>storage</th><th>ΔL ×1e-3</th>" in html
    assert "<td>influence</td><td>500 ms (2/s)</td><td>0.25 GB</td><td>0.40 ± 0.30</td>" in html
    assert (
        "<td>57%</td><td>-0.30 ± 0.04</td>" in html
    )  # D-TRAK's share of the teacher's ΔL, and the paired gap
    assert "<td>-0.06</td>" in html and "<td>-0.75</td>" in html  # one query: no standard error
    assert "<td>3.0 MB</td>" in html and html.count("<circle") == 2  # the two timed methods
    assert "a note" in html


def test_labels_of_methods_with_one_latency_and_score_do_not_print_over_each_other():
    """AbU+ at three steps costs the same and scores nearly the same: three labels, three lines."""
    points = [("AbU+ α = 1e-2", 0.016, 1.70), ("AbU+ α = 1e-4", 0.016, 1.71), ("AbU+ α = 1e-3", 0.016, 1.70),
              ("ranker", 52.0, 1.79)]  # fmt: skip
    colours = dict.fromkeys([p[0] for p in points], "#000")
    svg = speed_scatter_svg(points, "ΔL", 2.0, colours, "t")
    ys = {
        name: float(y)
        for y, name in re.findall(r'<text x="[^"]+" y="([^"]+)"[^>]*>(AbU[^<]+|ranker)<', svg)
    }
    assert len(ys) == 4
    abu = sorted(y for name, y in ys.items() if name.startswith("AbU"))
    assert min(np.diff(abu)) >= 12.9  # one 13 px text line apart, to the 0.1 px the SVG prints
    alone = speed_scatter_svg([points[0], points[3]], "ΔL", 2.0, colours, "t")  # the same axes
    assert (
        f'y="{ys["ranker"]:.1f}"' in alone.split(">ranker<")[0].rsplit("<text", 1)[1]
    )  # not moved


@pytest.mark.browser
@pytest.mark.slow
def test_the_report_renders_in_chromium(rng, browser, artifacts, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(sample_report(rng, sample_counterfactual()), encoding="utf-8")
    browser.get(page.resolve().as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == "test report"
    loaded = browser.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded == 2 * (1 + 3 * 10)  # each panel: the query and three rows of ten
    circles = browser.find_elements(By.CSS_SELECTOR, "svg circle")
    # Three timed methods against mAP, two against ΔL (the counterfactual chart).
    assert len(circles) == 5 and all(c.rect["width"] > 0 for c in circles)
    browser.save_screenshot(str(artifacts / "report.png"))
    assert (artifacts / "report.png").stat().st_size > 10_000
