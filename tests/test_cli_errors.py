"""Every verb answers a bad value with one line on stderr and exit code 2, before it starts any work."""

import argparse
import subprocess
import sys

import pytest

from fastgda.cli import build_parser, main


def leaf_verbs(parser, prefix=()):
    """Every runnable command line prefix, e.g. ("ranker", "train")."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_verbs(sub, (*prefix, name))


# One bad value per verb; paths point nowhere, so a check that waited for the inputs to load would name them
# instead of the value. (verb, arguments, what the one line must say)
BAD = [
    (("env",), ["--json", "extra"], "unrecognized arguments: extra"),
    (("build",), ["--data", "{tmp}/d", "--out", "{tmp}/b", "--model", "m", "--num-train-queries", "1"],
     "--num-train-queries: must be at least 2, got 1"),
    (("build",), ["--data", "{tmp}/d", "--out", "{tmp}/b", "--budget-hours", "0"],
     "--budget-hours: must be greater than 0, got 0"),
    (("build",), ["--data", "{tmp}/d", "--out", "{tmp}/b", "--model", "m", "--device", "cuda:banana"],
     "unknown device 'cuda:banana'"),
    (("world", "shapes"), ["--out", "{tmp}/w", "--size", "0"], "--size: must be at least 1, got 0"),
    (("world", "openmoji"), ["--out", "{tmp}/w", "--size", "0"], "--size: must be at least 1, got 0"),
    (("import-release",), ["{tmp}/none", "--out", "{tmp}/r"], "holds no feats"),
    (("world", "prompts"), ["--world", "{tmp}/none", "--out", "{tmp}/p.jsonl"], "none"),
    (("world", "probe"), ["--out", "{tmp}/p", "--epochs", "0"], "--epochs: must be at least 1"),
    (("model", "train"), ["--data", "{tmp}/d", "--out", "{tmp}/m", "--lr", "-1"], "--lr: must be greater than 0"),
    (("model", "sample"), ["--model", "{tmp}/m", "--prompts", "{tmp}/p", "--out", "{tmp}/q", "--steps", "0"],
     "--steps: must be at least 1"),
    (("teacher", "fisher"), ["--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/f", "--kind", "full"],
     "--kind: must be one of ekfac, diagonal"),
    (("teacher", "run"), ["--model", "m", "--data", "d", "--queries", "q", "--fisher", "f", "--out", "{tmp}/r",
                          "--alpha", "nan"], "--alpha: must be a finite number"),
    (("teacher", "run"), ["--model", "m", "--data", "d", "--queries", "q", "--fisher", "f", "--out", "{tmp}/r",
                          "--device", "banana"], "unknown device 'banana'; use auto"),
    (("teacher", "merge"), ["--run", "{tmp}/none"], "none"),
    (("embed",), ["--data", "{tmp}/d", "--out", "{tmp}/e", "--chunk-size", "0"], "--chunk-size: must be at least 1"),
    (("ranker", "train"), ["--items", "i", "--queries", "q", "--ground-truth", "g", "--out", "{tmp}/r",
                           "--outliers", "2"], "--outliers: must be at least 0 and at most 1, got 2"),
    (("attributor", "build"), ["--ranker", "r", "--items", "i", "--data", "d", "--out", "{tmp}/a",
                               "--backend", "annoy"], "--backend: invalid choice"),
    (("attributor", "remove"), ["--attributor", "{tmp}/a", "--ids", "-3"], "--ids: must be at least 0, got -3"),
    (("attribute",), ["--attributor", "{tmp}/a", "--image", "x.png", "--prompt", "p", "-k", "0"],
     "-k: must be at least 1, got 0"),
    (("eval", "map"), ["--items", "i", "--queries", "q", "--ground-truth", "g", "--threads", "two"],
     "--threads: expected int, got 'two'"),
    (("eval", "counterfactual"), ["--data", "d", "--query-set", "s", "--items", "i", "--queries", "q",
                                  "--ground-truth", "g", "--out", "{tmp}/c", "--k", "0"], "--k: must be at least 1"),
    (("eval", "counterfactual"), ["--data", "d", "--query-set", "s", "--items", "i", "--queries", "q",
                                  "--ground-truth", "g", "--out", "{tmp}/c", "--k", "3", "--query-ids", "3,x"],
     "--query-ids: expected comma-separated ids, got '3,x'"),
    (("ranker", "train"), ["--items", "i", "--queries", "q", "--ground-truth", "g", "--out", "{tmp}/r",
                           "--members", "0"], "--members: must be at least 1, got 0"),
    (("model", "train"), ["--data", "{tmp}/d", "--out", "{tmp}/m", "--preset", "huge"], "--preset: invalid choice"),
    (("serve",), ["--attributor", "{tmp}/a", "--port", "70000"], "--port: must be at least 0 and at most 65535"),
    (("serve",), ["--attributor", "{tmp}/a", "--body-timeout-s", "0"], "--body-timeout-s: must be greater than 0"),
    (("influence", "features"), ["--method", "dtrak", "--model", "m", "--data", "d", "--out", "{tmp}/g",
                                 "--projection-dim", "0"], "--projection-dim: must be at least 1, got 0"),
    (("influence", "rank"), ["--method", "tracin", "--model", "m", "--features", "f", "--queries", "q",
                             "--out", "{tmp}/r"], "--method: invalid choice"),
    (("eval", "counterfactual"), ["--data", "d", "--query-set", "s", "--items", "i", "--queries", "q",
                                  "--ground-truth", "g", "--out", "{tmp}/c", "--method", "no-folder"],
     "expected NAME=FOLDER"),
    (("demo",), ["--out", "{tmp}/demo", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
]  # fmt: skip


def test_every_verb_has_a_bad_value_case():
    assert {verb for verb, _, _ in BAD} == set(leaf_verbs(build_parser()))


@pytest.mark.parametrize(("verb", "arguments", "says"), BAD, ids=[" ".join(v) for v, _, _ in BAD])
def test_a_bad_value_is_one_line_and_exit_code_2(verb, arguments, says, tmp_path, capsys):
    argv = [*verb, *(a.replace("{tmp}", str(tmp_path)) for a in arguments)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert says in captured.err and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []  # refused before any work: nothing written


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fastgda.cli", "ranker", "train", "--items", "i", "--queries", "q"]
        + ["--ground-truth", "g", "--out", str(tmp_path / "r"), "--members", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "fastgda ranker train: error: argument --members: must be at least 1, got 0 "
        "(see `fastgda ranker train --help`)"
    ]


def test_out_of_range_settings_are_refused_by_the_configs_too():
    """The library refuses what the CLI refuses: a config checks its fields when it is built."""
    from fastgda import ConfigError
    from fastgda.ranker import RankerTrainConfig
    from fastgda.unlearning import FisherConfig, UnlearnConfig

    with pytest.raises(
        ConfigError, match=r"RankerTrainConfig.outlier_prob must be at least 0 and at most 1"
    ):
        RankerTrainConfig(outlier_prob=2.0)
    with pytest.raises(ConfigError, match=r"RankerTrainConfig.hidden must be at least 1, got 0"):
        RankerTrainConfig(hidden=(16, 0))
    with pytest.raises(ConfigError, match=r"UnlearnConfig.alpha must be a finite number, got nan"):
        UnlearnConfig(alpha=float("nan"))
    with pytest.raises(
        ConfigError, match=r"FisherConfig.kind must be one of ekfac, diagonal, got 'full'"
    ):
        FisherConfig(kind="full")
