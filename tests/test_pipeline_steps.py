"""The pipeline's one step runner: what it records, what it reuses, and the settings it refuses to mix."""

import json

import pytest

from fastgda.errors import FastGDAError
from fastgda.pipeline import StepRunner


def test_a_step_records_its_status_seconds_and_settings(tmp_path):
    runner = StepRunner(tmp_path, ["first", "second"], "test")
    assert runner.run("first", lambda x: x + 1, 1, settings={"size": (2, 3)}) == 2
    state = json.loads((tmp_path / "steps.json").read_text())
    record = state["steps"]["first"]
    assert record["status"] == "done" and record["settings"] == {"size": [2, 3]}
    assert record["seconds"] >= 0 and runner.seconds["first"] == record["last_seconds"]


def test_each_step_records_its_own_peak_memory_not_the_process_high_water_mark(tmp_path):
    import time

    import numpy as np

    def hold(megabytes: int) -> None:
        block = np.ones(megabytes * 2**20 // 8)  # float64, every page touched
        time.sleep(0.3)  # several samples while it is held
        del block

    runner = StepRunner(tmp_path, ["large", "small"], "test")
    runner.run("large", hold, 300)
    runner.run("small", hold, 1)
    steps = json.loads((tmp_path / "steps.json").read_text())["steps"]
    # The large step held 300 MiB more than the small one; the small one ran after the process's high.
    assert steps["large"]["peak_rss_mb"] >= steps["small"]["peak_rss_mb"] + 250
    assert steps["small"]["peak_rss_mb"] > 0
    if "peak_anonymous_mb" in steps["large"]:  # Linux: an array is anonymous memory
        assert steps["large"]["peak_anonymous_mb"] >= steps["small"]["peak_anonymous_mb"] + 250


def test_pages_of_a_memory_mapped_file_are_resident_but_not_anonymous(tmp_path):
    import numpy as np

    from fastgda.pipeline.memory import PeakMemory, resident_bytes

    if resident_bytes() is None:
        pytest.skip("no /proc here: only the high-water mark is known")
    path = tmp_path / "big.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(300 * 2**17,)).flush()
    with PeakMemory() as peak:
        mapped = np.load(path, mmap_mode="r")
        assert float(mapped.sum()) == 0.0  # every page read once, 300 MiB
        del mapped
    assert peak.bytes - peak.anonymous_bytes >= 250 * 2**20


def test_a_finished_step_keeps_the_time_it_took_and_a_rerun_records_its_own(tmp_path):
    (tmp_path / "steps.json").write_text(
        json.dumps({"steps": {"first": {"status": "done", "seconds": 120.0}}})
    )
    runner = StepRunner(tmp_path, ["first"], "test")
    runner.run("first", lambda: None)
    record = json.loads((tmp_path / "steps.json").read_text())["steps"]["first"]
    assert record["seconds"] == 120.0  # a reuse is no work
    assert runner.total_seconds("first") == 120.0 and record["last_seconds"] < 120


def test_an_interrupted_step_adds_up_the_runs_that_worked_on_it(tmp_path):
    (tmp_path / "steps.json").write_text(
        json.dumps({"steps": {"first": {"status": "running", "seconds": 30.0}}})
    )
    StepRunner(tmp_path, ["first"], "test").run("first", lambda: None)
    record = json.loads((tmp_path / "steps.json").read_text())["steps"]["first"]
    assert record["status"] == "done" and record["seconds"] >= 30.0


def test_a_step_stopped_part_way_keeps_the_time_it_worked(tmp_path):
    import time

    def stopped():
        time.sleep(0.2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StepRunner(tmp_path, ["first"], "test").run("first", stopped)
    record = json.loads((tmp_path / "steps.json").read_text())["steps"]["first"]
    assert record["status"] == "running" and record["seconds"] >= 0.2


def test_other_settings_for_a_begun_step_are_refused_before_any_work(tmp_path):
    def interrupted():
        raise KeyboardInterrupt

    runner = StepRunner(tmp_path, ["teacher"], "test")
    with pytest.raises(KeyboardInterrupt):
        runner.run("teacher", interrupted, settings={"num_pairs": 500, "seed": 0})
    ran = []
    again = StepRunner(tmp_path, ["teacher"], "test")
    with pytest.raises(FastGDAError, match=r"'teacher' \(num_pairs: 500 then, 100 now\)"):
        again.run("teacher", lambda: ran.append(1), settings={"num_pairs": 100, "seed": 0})
    assert ran == []
    again.run("teacher", lambda: ran.append(1), settings={"num_pairs": 500, "seed": 0})
    assert ran == [1]


def test_step_lines_go_to_stderr_and_only_where_progress_shows(tmp_path, capsys):
    """The command line's rule: stdout holds results; step lines go with the bars, and a quiet block has none."""
    from fastgda import progress

    with progress.reporting(True):
        StepRunner(tmp_path, ["first"], "test").run("first", lambda: None, title="the first step")
    captured = capsys.readouterr()
    assert "[test 1/1] the first step" in captured.err and captured.out == ""
    with progress.quiet():
        StepRunner(tmp_path / "quiet", ["first"], "test").run("first", lambda: None)
    assert capsys.readouterr().err == ""
