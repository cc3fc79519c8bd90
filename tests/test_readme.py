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
