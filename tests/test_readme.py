"""The README's Python examples run as written: every ```python block, in order, in one namespace."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the examples write under runs/
    namespace: dict = {}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "mAP(L=" in printed and (tmp_path / "runs/readme/attributor/manifest.json").is_file()
    answer = namespace["answer"]
    assert answer.ids.shape == (2, 5) and (answer.ids >= 0).all()


@pytest.mark.slow
def test_the_your_own_data_commands_run(tmp_path, monkeypatch, capsys):
    import shlex

    from fastgda.cli import main

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own data") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [" ".join(c.split()) for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command.split("#")[0])
        assert argv[0] == "fastgda" and main(argv[1:]) == 0, command
    out = capsys.readouterr().out
    assert "top 5 training images" in out and (tmp_path / "runs/mybuild/report.html").is_file()
