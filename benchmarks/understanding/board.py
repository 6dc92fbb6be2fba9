"""Outcomes per measure and reader, per corpus row; the tables that show them."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from . import judging
from .competitors import Competitor
from .corpus import Entry
from .judging import CATEGORIES, OUTCOMES, RIGHT, UNSURE, WRONG

CLIENT_WIDTH = 44
CELL_WIDTH = 20
KINDS = (
    "opposite: the other decision; token: a token other than the one written (a quote "
    "left in the new text); unknown, ambiguous: no decision; automatic: ignored"
)


@dataclass
class Board:
    """What each reader made of each case, by measure and by the corpus row behind it."""

    readers: list[Competitor]
    measures: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    rows: dict[str, tuple[Entry, dict[str, list[str]]]] = field(default_factory=dict)
    kinds: dict[str, Counter[str]] = field(default_factory=dict)
    """Reader -> how its wrong and not-understood cases failed (decisions)."""

    def add(self, measure: str, reader: str, judged: str, entry: Entry | None = None) -> None:
        """One case: ``judged`` is an outcome or a detailed judgement (see judging.judge)."""
        outcome = judging.outcome(judged)
        self.measures.setdefault(measure, {}).setdefault(reader, Counter())[outcome] += 1
        if outcome != judged and outcome != RIGHT:
            self.kinds.setdefault(reader, Counter())[judged] += 1
        if entry is not None:
            _, by_reader = self.rows.setdefault(entry.key, (entry, {}))
            by_reader.setdefault(reader, []).append(outcome)

    def row_outcome(self, key: str, reader: str) -> str | None:
        """A row is right when every case built from it is right; wrong if any is wrong."""
        outcomes = self.rows[key][1].get(reader)
        if not outcomes:
            return None
        if WRONG in outcomes:
            return WRONG
        return UNSURE if UNSURE in outcomes else RIGHT


def comparison(board: Board) -> None:
    """Per measure: each reader's right/wrong/not understood on the same cases."""
    print("\nSide by side on the same cases (right/wrong/not understood)")
    names = [reader.name for reader in board.readers]
    print(f"  {'measure':<36} {'cases':>6}  " + "".join(f"{n:<{CELL_WIDTH}}" for n in names))
    for measure, by_reader in board.measures.items():
        cases = sum(by_reader.get("mailbot", Counter()).values())
        cells = [_cell(reader, measure, by_reader.get(reader.name)) for reader in board.readers]
        print(f"  {measure:<36} {cases:>6}  " + "".join(f"{c:<{CELL_WIDTH}}" for c in cells))
    for reader in board.readers:
        if reader.missing:
            print(f"  {reader.name}: not installed: {reader.missing}")
        elif board.kinds.get(reader.name):
            kinds = ", ".join(f"{k} {n}" for k, n in board.kinds[reader.name].most_common())
            print(f"  {reader.name}, decisions missed: {kinds}")
    print(f"  ({KINDS})")


def _cell(reader: Competitor, measure: str, counts: Counter[str] | None) -> str:
    if reader.missing:
        return "not installed" if measure.startswith(reader.covers) else "-"
    if not counts:
        return "-"
    return "/".join(str(counts[outcome]) for outcome in OUTCOMES)


def coverage(board: Board) -> None:
    """Per category, a line per client x language: right/total for each reader."""
    print("\nCoverage by client x language (right/total; a row is right when every case")
    print("built from it is right)")
    for category in CATEGORIES:
        keys = [key for key, (e, _) in board.rows.items() if e.category == category]
        if keys:
            _category_table(board, category, keys)


def _category_table(board: Board, category: str, keys: list[str]) -> None:
    readers = [r.name for r in board.readers if any(r.name in board.rows[x][1] for x in keys)]
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key in keys:
        entry = board.rows[key][0]
        groups[(entry.client, entry.language)].append(key)
    print(f"  {category} ({len(keys)} rows)")
    header = f"    {'client_or_mta':<{CLIENT_WIDTH}} {'lang':<6}"
    print(header + "".join(f"{name:<{CELL_WIDTH}}" for name in readers))
    for (client, language), members in sorted(groups.items()):
        cells = [_ratio(board, members, name) for name in readers]
        line = f"    {client[:CLIENT_WIDTH]:<{CLIENT_WIDTH}} {language[:6]:<6}"
        print(line + "".join(f"{cell:<{CELL_WIDTH}}" for cell in cells))


def _ratio(board: Board, keys: list[str], reader: str) -> str:
    outcomes = [board.row_outcome(key, reader) for key in keys]
    judged = [o for o in outcomes if o is not None]
    return f"{judged.count(RIGHT)}/{len(judged)}" if judged else "-"
