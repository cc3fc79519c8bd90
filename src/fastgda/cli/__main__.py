"""``python -m fastgda.cli``: the same as the ``fastgda`` console script."""

from . import run

run()
