import subprocess
import sys

import pytest

import fastgda
from fastgda import MissingDependencyError
from fastgda._optional import require


def test_public_names_are_sorted_and_importable():
    assert fastgda.__all__ == sorted(fastgda.__all__)
    for name in fastgda.__all__:
        assert getattr(fastgda, name) is not None


def test_import_fastgda_stays_light():
    heavy = ("diffusers", "transformers", "ray", "fastapi", "faiss")
    code = f"import sys, fastgda; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_missing_extra_is_named():
    with pytest.raises(MissingDependencyError, match=r"pip install 'fastgda\[serve\]'"):
        require("surely_not_an_installed_module", extra="serve")
