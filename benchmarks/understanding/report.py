"""The benchmark run: every measure, mailbot and the libraries side by side."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mailbot import mailparse

from . import judging
from .board import Board, comparison, coverage
from .competitors import libraries, mailbot
from .corpus import Corpus, Entry, Unscorable, find_corpora, read_corpus
from .judging import (
    M_AGENCY,
    M_AUTO,
    M_BOUNCE,
    M_DECISION,
    M_FORWARD,
    M_FWD_DECISION,
    M_HTML,
    M_NOT_BOUNCE,
    M_REPLY,
    M_TEXT,
    RIGHT,
    UNSURE,
    Tally,
    bounce_recipients,
    judge,
)
from .tokenmail import TokenMail, token_mail
from .variants import (
    Variant,
    agency_variants,
    decision_variants,
    html_variants,
    synthetic_autoreplies,
)


def percent(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100.0 * part / whole:.1f}%)" if whole else "0/0"


def show_failures(failures: list[str], limit: int = 8) -> None:
    for failure in failures[:limit]:
        print(f"      - {failure}")
    if len(failures) > limit:
        print(f"      … and {len(failures) - limit} more")


def run(paths: list[Path]) -> int:
    """Score every corpus found under ``paths``; 1 if mailbot decided or bounced wrongly."""
    roots, problems = find_corpora(paths)
    for problem in problems:
        print(f"not a corpus: {problem}")
    if not roots:
        return 2
    loaded, entries, skipped = _load(roots)
    mails = {language: token_mail(language) for language in ("en", "fr")}
    board = Board([mailbot(), *libraries()])
    unscorable_report(skipped)
    generated: list[bytes] = []
    wrong = decisions_report(entries, mails, generated, board)
    wrong += forwards_report(entries, mails["en"], generated, board)
    robots_report(loaded, entries, board)
    false_bounces = bounces_report(loaded, entries, generated, board)
    speed_report([e.raw for e in loaded] + generated)
    coverage(board)
    comparison(board)
    return 1 if wrong or false_bounces else 0


def _load(roots: list[Path]) -> tuple[list[Entry], list[Entry], list[Unscorable]]:
    """Every row loaded (the overall measures take them all), those scorable, the others."""
    names = [root.name for root in roots]
    loaded: list[Entry] = []
    entries: list[Entry] = []
    skipped: list[Unscorable] = []
    for root in roots:
        name = "" if len(roots) == 1 else (root.name if names.count(root.name) == 1 else str(root))
        corpus: Corpus = read_corpus(root, name)
        print(f"corpus: {root} ({len(corpus.entries)} messages)")
        skipped += corpus.unscorable
        loaded += corpus.entries
        for entry in corpus.entries:
            reason = judging.unscorable(entry)
            if reason is None:
                entries.append(entry)
            else:
                where = f"{entry.label} (manifest line {entry.row})"
                skipped.append(Unscorable(where, reason, entry.category))
    return loaded, entries, skipped


def unscorable_report(skipped: list[Unscorable]) -> None:
    if not skipped:
        print("all cases scorable")
        return
    reasons = Counter(s.reason for s in skipped).most_common()
    print(f"{len(skipped)} cases not scorable: " + "; ".join(f"{r} ({n})" for r, n in reasons))
    show_failures([f"{s.reason}: {s.label}" for s in skipped], 12)


# -- decisions ------------------------------------------------------------------------


def _score_variant(
    board: Board, measure: str, variant: Variant, tally: Tally, *, forwarded: bool = False
) -> None:
    """mailbot's detailed judgement in the tally; every reader's outcome on the board."""
    judged = judge(variant.raw, variant.verb, variant.token, forwarded=forwarded)
    tally.add(judged, variant.label)
    board.add(measure, "mailbot", judged, variant.entry)
    for reader in board.readers[1:]:
        score = reader.agency if forwarded else reader.reply
        if score is not None:
            board.add(measure, reader.name, score(variant), variant.entry)


def decisions_report(
    entries: list[Entry], mails: dict[str, TokenMail], generated: list[bytes], board: Board
) -> int:
    replies, html = Tally(), Tally()
    for variant in decision_variants(entries, mails):
        _score_variant(board, M_REPLY, variant, replies)
        generated.append(variant.raw)
    for variant in html_variants(mails):
        _score_variant(board, M_HTML, variant, html)
        generated.append(variant.raw)
    print("\nDecisions (reply above a quote of mailbot's token mail)")
    for name, tally in (("corpus reply formats", replies), ("HTML-only replies", html)):
        print(f"  {name}: correct {percent(tally.correct, tally.total)}, {tally.errors()}")
        show_failures(tally.failures)
    both = replies.correct + html.correct
    wrong = replies.wrong_opposite + html.wrong_opposite
    print(f"  all: correct {percent(both, replies.total + html.total)}, wrong-opposite {wrong}")
    return wrong + own_words_report(entries, board)


def own_words_report(entries: list[Entry], board: Board) -> int:
    """Corpus replies whose expected file gives their new text or decision."""
    _score_rows(board, entries, M_TEXT, "reply")
    _score_rows(board, entries, M_DECISION, "reply")
    replies = [e for e in entries if e.category == "reply"]
    what = "corpus replies, new text as expected (whitespace and rule lines aside)"
    _own_line(what, replies, judging.mailbot_reply_text)
    what = "corpus replies, their own decision and tokens as expected"
    return _own_line(what, replies, judging.mailbot_reply_decision)


# -- corpus rows ----------------------------------------------------------------------


def _score_rows(board: Board, entries: list[Entry], measure: str, *categories: str) -> None:
    """Every reader that takes part in a measure, on every row of these categories."""
    for entry in entries:
        if entry.category not in categories:
            continue
        bounce = entry.expected.get("is_bounce") is True
        if bounce != (measure == M_BOUNCE) and entry.category == "bounce":
            continue  # a bounce row says either "a bounce" or "not a bounce"
        for reader in board.readers:
            score = reader.row(measure)
            judged = score(entry) if score is not None else None
            if judged is not None:
                board.add(measure, reader.name, judged, entry)


def _own_line(what: str, entries: list[Entry], score: Callable[[Entry], str | None]) -> int:
    """mailbot on the rows that say what to expect: a line, the failures; wrong decisions."""
    scored = [(e, result) for e in entries if (result := score(e)) is not None]
    if not scored:
        return 0
    right = sum(1 for _, result in scored if result in (RIGHT, "correct"))
    print(f"  {what}: {percent(right, len(scored))}")
    show_failures([f"{r}: {e.label}" for e, r in scored if r not in (RIGHT, "correct")])
    return sum(1 for _, result in scored if result == "opposite")


def forwards_report(
    entries: list[Entry], mail: TokenMail, generated: list[bytes], board: Board
) -> int:
    _score_rows(board, entries, M_FORWARD, "forwarded")
    _score_rows(board, entries, M_FWD_DECISION, "forwarded")
    total, recognised, attributed, failures = _corpus_forwards(entries)
    print("\nForwards")
    print(f"  corpus forwards recognised: {percent(recognised, total)}")
    print(f"  attributed to the right original sender: {percent(attributed, total)}")
    show_failures(failures)
    forwards = [e for e in entries if e.category == "forwarded"]
    what = "corpus forwards, the forwarded message's decision and tokens as expected"
    wrong = _own_line(what, forwards, judging.mailbot_forward_decision)
    agency = Tally()
    for variant in agency_variants(entries, mail):
        _score_variant(board, M_AGENCY, variant, agency, forwarded=True)
        generated.append(variant.raw)
    print("  agency forwards of ACCEPT <token>, decision and token found in the forwarded")
    print(f"  message: correct {percent(agency.correct, agency.total)}, {agency.errors()}")
    show_failures(agency.failures)
    return agency.wrong_opposite + wrong


def _corpus_forwards(entries: list[Entry]) -> tuple[int, int, int, list[str]]:
    """(forwards, recognised, attributed to the right sender, failures) for mailbot."""
    forwards = [
        e for e in entries if e.category == "forwarded" and e.expected.get("is_forwarded") is True
    ]
    recognised = attributed = 0
    failures: list[str] = []
    for entry in forwards:
        result = judging.mailbot_forward(entry)
        found = judging.parsed(entry.raw).forwarded
        recognised += result != UNSURE
        attributed += result == RIGHT
        if found is None:
            failures.append(f"not recognised: {entry.label}")
        elif result != RIGHT:
            failures.append(f"wrong sender {found.sender}: {entry.label}")
    return len(forwards), recognised, attributed, failures


def robots_report(loaded: list[Entry], entries: list[Entry], board: Board) -> None:
    _score_rows(board, entries, M_AUTO, "autoreply")
    robots = [(e.label, e.raw) for e in loaded if e.expected.get("is_autoreply")]
    robots += list(synthetic_autoreplies())
    parsed = [(label, mailparse.parse(raw)) for label, raw in robots]
    ignored = [label for label, p in parsed if p.automatic]
    as_bounce = [label for label, p in parsed if p.bounce is not None]
    print("\nAuto-replies (corpus and synthetic French/English out-of-office)")
    print(f"  ignored (automatic): {percent(len(ignored), len(robots))}")
    print(f"  taken for bounces: {len(as_bounce)}")
    show_failures([label for label, _ in robots if label not in ignored])


def bounces_report(
    loaded: list[Entry], entries: list[Entry], generated: list[bytes], board: Board
) -> int:
    _score_rows(board, entries, M_BOUNCE, "bounce")
    _score_rows(board, entries, M_NOT_BOUNCE, "bounce", "other")
    print("\nBounces")
    for library in (False, True):
        total, recognised, right, failures = bounce_recipients(loaded, library=library)
        name = "with flufl.bounce" if library else "hand-written only"
        print(f"  {name}: recognised {percent(recognised, total)}", end="")
        print(f"; failed recipients right: {percent(right, total)}")
        show_failures(failures, 4)
    others = [(e.label, e.raw) for e in loaded if e.expected.get("is_bounce") is not True]
    others += [(f"generated #{i}", raw) for i, raw in enumerate(generated)]
    false = [label for label, raw in others if mailparse.parse(raw).bounce is not None]
    print(f"  non-bounces taken for bounces: {len(false)} of {len(others)}")
    show_failures(false)
    return len(false)


def speed_report(messages: list[bytes]) -> None:
    times: list[float] = []
    for raw in messages:
        started = time.perf_counter()
        mailparse.parse(raw)
        times.append(time.perf_counter() - started)
    if not times:
        return
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    median = statistics.median(times)
    print(f"\nSpeed (parse time over {len(times)} messages)")
    print(
        f"  median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms"
    )
