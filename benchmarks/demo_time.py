"""`make demo` cold (fresh virtual environment, empty output folder) and warm (both reused), and its report.

Runs ``make demo`` twice with a throw-away ``VENV`` and ``DEMO_OUT``, prints the wall times against the budgets
(cold <= 15 min, warm <= 2 min), then opens ``report.html`` in headless Chromium and saves a screenshot.

    python benchmarks/demo_time.py --work runs/demo-time
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path


def timed_make(venv: Path, out: Path, log: Path) -> float:
    began = time.perf_counter()
    with open(log, "wb") as handle:
        subprocess.run(
            ["make", "demo", f"VENV={venv}", f"DEMO_OUT={out}"],
            check=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    return time.perf_counter() - began


def screenshot(page: Path, png: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,2400"]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(page.resolve().as_uri())
        images = driver.execute_script(
            "return [document.images.length, [...document.images].filter(i => i.naturalWidth > 0).length]"
        )
        charts = len(driver.find_elements(By.CSS_SELECTOR, "svg"))
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    return {"images": images[0], "images_rendered": images[1], "charts": charts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/demo-time")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    venv, out = work / "venv", work / "demo"
    cold = timed_make(venv, out, work / "cold.log")
    print(
        f"cold make demo (fresh venv + empty output): {cold / 60:.1f} min (budget 15)", flush=True
    )
    warm = timed_make(venv, out, work / "warm.log")
    print(f"warm make demo (both reused): {warm / 60:.2f} min (budget 2)", flush=True)
    rendered = screenshot(out / "report.html", work / "report.png")
    print(f"report.html in headless Chromium: {rendered}; screenshot {work / 'report.png'}")
    summary = json.loads((out / "summary.json").read_text())
    result = {
        "cold_minutes": cold / 60,
        "warm_minutes": warm / 60,
        "report": rendered,
        "demo_steps_warm": summary["step_seconds"],
        "speedup": summary["speedup"],
    }
    (work / "demo_time.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
