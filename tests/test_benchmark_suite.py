"""The benchmark suite's bookkeeping: its blocks in BENCHMARKS.md are replaced in place, text around them kept."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_suite():
    spec = importlib.util.spec_from_file_location(
        "bench_suite", ROOT / "benchmarks" / "__main__.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def record(name: str, stdout: str) -> dict:
    return {"name": name, "command": ["python", f"benchmarks/{name}.py", "--threads", "2"],
            "machine": "Linux x86_64, 2 CPUs", "started": "2026-11-29T09:00:00+00:00", "seconds": 90.0,
            "returncode": 0, "stdout": stdout}  # fmt: skip


def test_block_is_replaced_in_place_and_text_around_it_is_kept(tmp_path):
    suite = load_suite()
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(
        "# Benchmarks\n\nreading before\n\n<!-- bench:latency -->\nold figures\n<!-- /bench:latency -->\n\n"
        "reading after\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n",
        encoding="utf-8",
    )
    out = "N = 1,000\n\n| backend | p50 ms |\n|---|---:|\n| exact | 1.5 |\nreference p50 9.0 ms\n"
    assert suite.update_benchmarks_md(page, record("latency", out))
    text = page.read_text(encoding="utf-8")
    assert "old figures" not in text
    assert "reading before" in text and "reading after" in text and "kept" in text
    block = text[text.index("<!-- bench:latency") : text.index("<!-- /bench:latency -->")]
    assert "python benchmarks/latency.py --threads 2" in block
    assert "| exact | 1.5 |" in block  # tables stay tables
    assert "```text\nN = 1,000\n```" in block and "```text\nreference p50 9.0 ms\n```" in block
    # Regenerating is idempotent: the block is found again and replaced, not duplicated.
    assert suite.update_benchmarks_md(page, record("latency", out))
    assert page.read_text(encoding="utf-8").count("<!-- bench:latency") == 1
    assert not suite.update_benchmarks_md(page, record("missing", out))


def test_every_registered_script_exists_and_the_listing_runs():
    suite = load_suite()
    for bench in suite.BENCHMARKS:
        assert (ROOT / "benchmarks" / f"{bench.name}.py").is_file(), bench.name
        assert set(bench.needs) <= set(suite.BY_NAME)
    listing = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(b.name in listing for b in suite.BENCHMARKS)
