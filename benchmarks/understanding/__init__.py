"""The mail-understanding benchmark, in parts: reading corpora (``corpus``),
mailbot's own token mail (``tokenmail``), the messages built from corpus
formats (``variants``), judging mailbot (``judging``), judging the best-known
libraries on the same cases (``competitors``) and printing (``report``).

``benchmarks/mail_understanding.py`` is the entry point.
"""
