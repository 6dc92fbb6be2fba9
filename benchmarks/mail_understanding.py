"""How well mailbot understands real mail: decisions, forwards, robots, bounces, speed;
and what the best-known libraries make of the same cases.

Usage: ``python benchmarks/mail_understanding.py CORPUS_DIR [CORPUS_DIR ...]``
where each CORPUS_DIR is laid out like ``shared/corpus`` (``manifest.tsv`` with
the columns path, category, client_or_mta, language, expected_file; the
messages as .eml, or .txt / .html bodies; the ``*.expected.json`` files), or
is a directory whose subdirectories are such corpora (``tests/mail``).

What is measured:

- **Decisions**: for every reply in the corpus, its quote format (the lines
  that introduce its quote, and how the quoted text is marked: ``> ``,
  indentation or nothing) is reused to build realistic answers to mailbot's
  own token mail (rendered from the shipped templates, in English and French,
  and containing both ACCEPT and REFUSE and the token): ``ACCEPT <token>``,
  ``REFUSE``, bare ``ACCEPT`` and their French forms above the quote. Plus
  synthetic HTML-only replies in the Gmail, Outlook, Apple Mail and
  Thunderbird formats. Each goes through ``mailparse.parse`` then
  ``commands.find_command(subject, new_text)``; the token must be the first of
  ``tokens_in_new_text`` (and none for a bare decision). The quote format is
  found from the expected files and a deliberately simple detector written
  here, not from mailparse's own rules. A reply whose own words decide
  (``decision`` or ``tokens_in_new_text`` in its expected file) is reused
  with the command alone above its quote.
- **Replies' own words**: where the expected file gives them, a reply's new
  text (``reply_text``, ``_regex``, ``_contains``, ``_not_contains``;
  whitespace and rule lines aside) and the decision read from it
  (``decision``: ACCEPT, REFUSE or null; ``tokens_in_new_text``).
- **Forwards**: corpus forwards recognised and attributed to the right
  original sender; and agency forwards (each corpus forward format, plus
  ``message/rfc822`` attachments) whose forwarded message says ``ACCEPT
  <token>``: decision and token found in ``forwarded.new_text`` (the corpus
  forward's placeholder line, or the first line of its ``forwarded_body``,
  gives way to the command). Where the expected file gives them, the
  forwarded message's own decision (``forwarded_decision``,
  ``forwarded_tokens``).
- **Auto-replies**: corpus auto-replies and synthetic French/English
  out-of-office replies must all be ``automatic`` and never read as bounces.
- **Bounces**: corpus bounces recognised, failed recipients exact where the
  expected file lists them (with and without flufl.bounce, to show what the
  library adds); a report whose ``bounce_kind`` is a delay must stay a delay;
  every other message (and every generated variant) must not be taken for a
  bounce.
- **Speed**: parse time per message, median and p99.
- **Coverage**: per category, a line per client_or_mta x language of the
  manifests, with the rows right out of those scored.
- **Side by side**: the same cases read by ``email-reply-parser`` and
  ``quotequail`` (replies: the decision read with mailbot's own command grammar
  from the new text they cut out; forwards: ``quotequail.unwrap``'s original
  sender) and by ``flufl.bounce`` alone (bounces), as right/wrong/not
  understood. The libraries are optional: ``pip install '.[bench]'``.

A row that cannot be scored (no expected file where its category needs one, a
forward without ``forwarded_from``, a bounce without ``bounced_recipients``,
an unknown category, a message that does not parse, an expected file that is
not valid JSON, a missing file) is counted and listed with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from understanding.corpus import Entry, load_corpus, read_corpus, wrap
from understanding.report import run
from understanding.variants import FORWARD_LINE, quote_format

__all__ = ["FORWARD_LINE", "Entry", "load_corpus", "main", "quote_format", "read_corpus", "wrap"]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    return run([Path(arg) for arg in argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
