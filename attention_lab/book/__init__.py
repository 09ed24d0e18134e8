"""Book tooling: building the chapters (:mod:`.build`), the notebooks' setup cell (:mod:`.setup_cell`), the
shared plots (:mod:`.plots`) and the one loader of committed results (:mod:`.results`).

``python -m attention_lab.book build 01`` builds a chapter (see :mod:`attention_lab.book.build`).
"""
