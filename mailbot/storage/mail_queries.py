"""Queries on the mail tables: received mail (``inbound_message``) and the outbox.

Each runs on an indexed path; the rows are handed back as they are stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from mailbot.domain import InboundStatus, OutboxStatus
from mailbot.storage.tables import InboundRow, OutboxRow


def claim_inbound(session: Session, inbound_id: int) -> InboundRow | None:
    """Lock a received message for processing, unless another worker has it or had it."""
    query = (
        select(InboundRow)
        .where(InboundRow.id == inbound_id, InboundRow.status == InboundStatus.RECEIVED)
        .with_for_update(skip_locked=True)
    )
    return session.exec(query).first()


def next_unprocessed(session: Session, after: int) -> tuple[int, bytes] | None:
    """The id and raw bytes of the oldest message above ``after`` not yet acted on
    (index: status, id): read without a lock, to parse before claiming it."""
    query = (
        select(InboundRow.id, InboundRow.raw)
        .where(InboundRow.status == InboundStatus.RECEIVED, col(InboundRow.id) > after)
        .order_by(col(InboundRow.id))
        .limit(1)
    )
    found = session.exec(query).first()
    return None if found is None or found[0] is None else (found[0], found[1])


def claim_next_inbound(session: Session, after: int) -> InboundRow | None:
    """Lock the oldest message above ``after`` not yet acted on and not locked by
    another worker (PostgreSQL's SKIP LOCKED): the claim of one worker among many."""
    query = (
        select(InboundRow)
        .where(InboundRow.status == InboundStatus.RECEIVED, col(InboundRow.id) > after)
        .order_by(col(InboundRow.id))
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return session.exec(query).first()


def unprocessed_inbound(session: Session, limit: int = 100, after: int = 0) -> list[int]:
    """Ids of stored messages not yet acted on, from ``after`` up (index: status, id)."""
    query = (
        select(InboundRow.id)
        .where(InboundRow.status == InboundStatus.RECEIVED, col(InboundRow.id) > after)
        .order_by(col(InboundRow.id))
        .limit(limit)
    )
    return [i for i in session.exec(query).all() if i is not None]


def newest_inbound_id(session: Session) -> int:
    """The id of the message stored last (0 when none): it moves while mail arrives."""
    return int(session.exec(select(func.max(InboundRow.id))).one() or 0)


def inbound_counts(session: Session) -> dict[str, int]:
    """How many stored messages are in each status."""
    query = select(InboundRow.status, func.count()).group_by(col(InboundRow.status))
    return {status: int(count) for status, count in session.exec(query).all()}


def inbound_overview(session: Session, status: str | None, limit: int) -> list[InboundRow]:
    """Stored messages, oldest first, optionally of one status."""
    query = select(InboundRow).order_by(col(InboundRow.id)).limit(max(limit, 0))
    if status:
        query = query.where(InboundRow.status == status)
    return list(session.exec(query).all())


def outbox_overview(session: Session, sent_limit: int) -> list[OutboxRow]:
    """Everything not yet sent (queued, being sent, dead), then the latest sent."""
    unsent = (
        select(OutboxRow).where(OutboxRow.status != OutboxStatus.SENT).order_by(col(OutboxRow.id))
    )
    sent = (
        select(OutboxRow)
        .where(OutboxRow.status == OutboxStatus.SENT)
        .order_by(col(OutboxRow.id).desc())
        .limit(max(sent_limit, 0))
    )
    return [*session.exec(unsent).all(), *session.exec(sent).all()]


def due_outbox(session: Session, now: datetime, limit: int) -> list[OutboxRow]:
    query = (
        select(OutboxRow)
        .where(
            col(OutboxRow.status).in_((OutboxStatus.QUEUED, OutboxStatus.SENDING)),
            col(OutboxRow.next_attempt_at) <= now,
        )
        .order_by(col(OutboxRow.next_attempt_at), col(OutboxRow.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.exec(query).all())


def outbox_rows(session: Session, ids: list[int]) -> list[OutboxRow]:
    query = select(OutboxRow).where(col(OutboxRow.id).in_(ids)).order_by(col(OutboxRow.id))
    return list(session.exec(query).all())


def dead_outbox(session: Session) -> list[OutboxRow]:
    query = (
        select(OutboxRow).where(OutboxRow.status == OutboxStatus.DEAD).order_by(col(OutboxRow.id))
    )
    return list(session.exec(query).all())


def waiting_outbox(session: Session, now: datetime) -> list[OutboxRow]:
    """Queued mail waiting out a backoff (index: status, next_attempt_at)."""
    query = select(OutboxRow).where(
        OutboxRow.status == OutboxStatus.QUEUED, col(OutboxRow.next_attempt_at) > now
    )
    return list(session.exec(query).all())


def mails_to_mailbox_since(
    session: Session, address: str, since: datetime, events: tuple[str, ...] = ()
) -> int:
    """Mails queued since then to the mailbox of ``address``: the address itself
    and its ``+tag`` variants, which land in the same mailbox; only ``events``
    when given.

    The tagged variants are asked as a range of the address index as well as
    a LIKE: a LIKE alone is read through the whole index (SQLite's LIKE is
    not case-sensitive, so its index cannot serve it), a sweep's mails to
    untrusted addresses each paying a read of the outbox."""
    local, _, domain = address.partition("@")
    base = local.partition("+")[0]
    pattern = f"{_like_escaped(base)}+%@{_like_escaped(domain)}"
    to_email = col(OutboxRow.to_email)  # "base+" <= a tagged address < "base," in byte order
    query = (
        select(func.count())
        .select_from(OutboxRow)
        .where(
            or_(
                to_email == f"{base}@{domain}",
                and_(
                    to_email >= f"{base}+",
                    to_email < f"{base},",
                    to_email.like(pattern, escape="\\"),
                ),
            ),
            col(OutboxRow.created_at) >= since,
        )
    )
    if events:
        query = query.where(col(OutboxRow.event).in_(events))
    return int(session.exec(query).one())


def mailbox(address: str) -> str:
    """The mailbox an address lands in: its ``+tag`` taken off."""
    local, _, domain = address.partition("@")
    return f"{local.partition('+')[0]}@{domain}"


MAILBOXES_PER_QUERY = 100
"""Mailboxes asked about in one statement: SQLite bounds the depth of an expression."""


def mails_to_mailboxes_since(
    session: Session, addresses: Iterable[str], since: datetime
) -> Counter[str]:
    """``mails_to_mailbox_since`` for many addresses at once, by mailbox."""
    boxes = sorted({mailbox(address) for address in addresses})
    counts: Counter[str] = Counter()
    for start in range(0, len(boxes), MAILBOXES_PER_QUERY):
        counts.update(_mails_to(session, boxes[start : start + MAILBOXES_PER_QUERY], since))
    return counts


def _mails_to(session: Session, boxes: list[str], since: datetime) -> Counter[str]:
    connection = session.connection()
    bases = sorted({box.partition("@")[0] for box in boxes})
    # one shape whatever the count: compiled once, and one SQL text, which the
    # PostgreSQL driver prepares once it recurs (planning a hundred ranges costs)
    bases += bases[-1:] * (MAILBOXES_PER_QUERY - len(bases))
    padded = boxes + boxes[-1:] * (MAILBOXES_PER_QUERY - len(boxes))
    values: dict[str, Any] = {"boxes": padded, "since": since}
    for i, base in enumerate(bases):
        values[f"low{i}"], values[f"high{i}"] = f"{base}+", f"{base},"
    statement = _mails_to_statement()
    wanted = set(boxes)
    addresses = connection.execute(statement, values).scalars()
    return Counter(box for address in addresses if (box := mailbox(address)) in wanted)


@lru_cache(maxsize=1)
def _mails_to_statement() -> Select[str]:
    """The statement of ``_mails_to``, built once: its hundred ranges are bound
    parameters, so a chunk of a sweep does not build and key it each time."""
    outbox = OutboxRow.metadata.tables[OutboxRow.__tablename__]
    to_email = outbox.c.to_email  # in byte order (``tables.BYTE_ORDERED_ADDRESS``)
    ranges = [
        and_(to_email >= bindparam(f"low{i}"), to_email < bindparam(f"high{i}"))
        for i in range(MAILBOXES_PER_QUERY)
    ]
    return sa_select(to_email).where(
        or_(to_email.in_(bindparam("boxes", expanding=True)), *ranges),
        outbox.c.created_at >= bindparam("since"),
    )


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
