"""``python -m attention_lab.exercises build``: regenerate every student notebook."""

import sys

from attention_lab.book.build import NOTEBOOKS
from attention_lab.exercises.student import build_all

if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m attention_lab.exercises build")
    for path in build_all(NOTEBOOKS):
        print(f"wrote {path.relative_to(NOTEBOOKS.parent)}")
