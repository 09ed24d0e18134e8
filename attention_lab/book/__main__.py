"""``python -m attention_lab.book build|text ...``: see :mod:`attention_lab.book.build`."""

from attention_lab.book.build import main

main()
