import argparse
import json

import pytest

from fastgda.cli import build_parser, main


def _all_argvs(parser, prefix=()):
    yield list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_argvs(sub, (*prefix, name))


def test_every_verb_has_help(capsys):
    argvs = list(_all_argvs(build_parser()))
    assert ["model", "train"] in argvs and ["world", "shapes"] in argvs
    for argv in argvs:
        assert main([*argv, "--help"]) == 0
        out = capsys.readouterr().out
        assert "usage: fastgda" in out and "%%" not in out


def test_env_reports_versions_as_json(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] and "cpu" in info["devices"]


def test_world_shapes_writes_a_world_and_reports_it(tmp_path, capsys):
    assert (
        main(f"world shapes --out {tmp_path / 'w'} --size 50 --per-concept 4 --json".split()) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["size"] == 50 and len(result["concepts"]["cross"]) == 4
    assert (
        main(
            ["world", "prompts", "--world", str(tmp_path / "w"), "--out", str(tmp_path / "p.jsonl")]
        )
        == 0
    )
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 32


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["world", "shapes", "--out", str(tmp_path / "w"), "--size", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgda: error:") and "\n" not in err
    assert main(["world", "shapes", "--size", "5"]) == 2  # argparse: --out is required
    (tmp_path / "empty.txt").write_text("\n\n")
    assert (
        main(
            f"model sample --model {tmp_path / 'nope'} --prompts {tmp_path / 'empty.txt'} "
            f"--out {tmp_path / 'q'}".split()
        )
        == 2
    )
    assert "no prompts" in capsys.readouterr().err


def test_model_train_then_sample_writes_a_query_set(small_world, tmp_path, capsys):
    from safetensors.torch import load_file

    from fastgda import ImageCaptionFolder

    model_dir = tmp_path / "model"
    assert (
        main(
            f"model train --data {small_world.root} --out {model_dir} --steps 2 --batch-size 4 "
            "--checkpoint-every 1".split()
        )
        == 0
    )
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["training"]["command"].startswith("fastgda model train --data")
    assert manifest["training"]["data"]["content_hash"] == small_world.content_hash
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a big red circle", "tag": "x"}\n{"prompt": "a tiny cyan cross"}\n'
    )
    assert (
        main(
            f"model sample --model {model_dir} --prompts {prompts} --out {tmp_path / 'q'} --steps 2 "
            "--seed 7 --json".split()
        )
        == 0
    )
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["num_queries"] == 2
    queries = ImageCaptionFolder(tmp_path / "q")
    assert len(queries) == 2 and queries.captions(0) == ("a big red circle",)
    assert (
        queries.records[0]["seed"] == 7
        and queries.records[1]["seed"] == 8
        and queries.records[0]["tag"] == "x"
    )
    tensors = load_file(tmp_path / "q" / "tensors.safetensors")
    assert tensors["x0"].shape == (2, 3, 16, 16) and tensors["text_states"].shape == (2, 24, 384)
    assert queries.load_image(1).shape == (16, 16, 3)
    assert (
        main(
            f"model sample --model {model_dir} --prompts {prompts} --out {tmp_path / 'q'} --steps 2".split()
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", '{"prompt": ""}\n'])
def test_empty_prompts_are_refused(tmp_path, text):
    from fastgda import FastGDAError
    from fastgda.diffusion.queries import read_prompts

    (tmp_path / "p").write_text(text)
    with pytest.raises(FastGDAError):
        read_prompts(tmp_path / "p")
