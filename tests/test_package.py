import configparser
import subprocess
import sys
from pathlib import Path

import pytest

import fastgda
from fastgda import MissingDependencyError
from fastgda._optional import require


def test_public_names_are_sorted_and_importable():
    assert set(fastgda._FRONT) <= set(fastgda.__all__)
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


def test_the_library_never_imports_the_app_or_the_front_ends():
    """The contracts of .importlinter hold (checked by import-linter), and the library contract lists every
    module of the library, so a new module is covered the day it is added."""
    root = Path(__file__).resolve().parents[1]
    contracts = configparser.ConfigParser()
    contracts.read(root / ".importlinter")
    listed = set(
        contracts["importlinter:contract:library-imports-no-app"]["source_modules"].split()
    )
    package = root / "src" / "fastgda"
    modules = {
        f"fastgda.{path.stem}"
        for path in package.iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists())
        and path.stem not in ("__init__", "__main__", "app", "cli", "service")
    }
    assert listed == modules
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def test_the_root_package_names_its_front_objects_statically_too():
    """Each lazily imported front object is also imported under TYPE_CHECKING, from the same module: what the
    import contract (and a type checker) sees is what ``import fastgda`` gives."""
    import ast

    tree = ast.parse(Path(fastgda.__file__).read_text(encoding="utf-8"))
    static = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imported in node.body:
                static.update({alias.name: imported.module for alias in imported.names})
    assert static == fastgda._FRONT
