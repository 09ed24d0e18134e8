"""``python -m attention_lab.exercises build|grade``.

    python -m attention_lab.exercises build                          # regenerate every student notebook
    python -m attention_lab.exercises grade NB.ipynb [NB ...] [--json OUT] [--chapter NN] [--timeout S]

``grade`` executes each student's notebook and runs the package's own checkers on the student's functions
(see :mod:`attention_lab.exercises.grade`); its exit status is non-zero when any exercise fails.
"""

from __future__ import annotations

import argparse
import sys


def build() -> int:
    """Regenerate ``notebooks/student/`` from the solved notebooks of the repository checkout."""
    from attention_lab.book.build import NOTEBOOKS
    from attention_lab.exercises.student import build_all

    for path in build_all(NOTEBOOKS):
        print(f"wrote {path.relative_to(NOTEBOOKS.parent)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the chosen command; returns the exit status."""
    from attention_lab.exercises import grade

    parser = argparse.ArgumentParser(prog="python -m attention_lab.exercises",
                                     description="Student notebooks: build them, grade them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{build,grade}")
    commands.add_parser("build", help="regenerate notebooks/student/ from the solved notebooks")
    grader = commands.add_parser("grade", help="execute students' notebooks and run the package's checkers on them",
                                 description=grade.__doc__.split("\n\n")[0])
    grade.add_arguments(grader)
    args = parser.parse_args(argv)
    if args.command == "build":
        return build()
    return grade.run(args)


if __name__ == "__main__":
    sys.exit(main())
