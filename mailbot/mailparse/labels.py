"""The labels of a quoted or forwarded message's header block, in the clients' languages.

Every client writes the same few fields above a forwarded or quoted original
("From / Sent / To / Cc / Subject"), translated into its user's language:
Outlook's "De : / Envoyé : / À : / Objet :", GMX's "Gesendet: / Von: / An: /
Betreff:", Apple Mail's "Da: / Oggetto: / Data: / A:", Orange's "Copie à :"...
One table, so that the reply cutter (``headerblocks``) and the forward reader
(``forwards``, ``fieldblocks``) agree on what a label is and which field it names.
"""

from __future__ import annotations

import re

FIELDS: dict[str, tuple[str, ...]] = {
    "from": (
        "from", "de", "von", "van", "da", "fra", "från", "fran", "od", "от", "отправитель",
        "lähettäjä", "lahettaja", "feladó", "felado", "kimden", "expéditeur", "expediteur",
        "remitente", "mittente", "afzender", "absender", "nadawca", "odesílatel",
        "odesilatel", "remetente", "发件人", "寄件者", "差出人", "보낸 사람", "de la",
    ),
    "date": (
        "date", "sent", "sent at", "datum", "envoyé", "envoye", "envoyé le", "envoye le",
        "gesendet", "fecha", "enviado", "enviada", "enviado el", "enviada el", "enviado em",
        "enviada em",
        "inviato", "data", "verzonden", "verstuurd", "sendt", "skickat", "wysłano", "wyslano",
        "отправлено", "дата", "dato", "lähetetty", "lahetetty", "päivämäärä", "elküldve",
        "tarih", "gönderildi", "发送时间", "日期", "送信日時",
    ),
    "to": (
        "to", "à", "a", "pour", "an", "aan", "para", "per", "til", "till", "do", "кому",
        "vastaanottaja", "címzett", "kime", "收件人", "宛先", "destinataire", "destinatario",
        "destinatário", "empfänger",
    ),
    "cc": (
        "cc", "bcc", "cci", "ccn", "cco", "copie", "copie à", "copie a", "kopie", "kopia",
        "kopi", "copia", "cópia", "копия", "抄送", "blindkopie", "copie cachée à",
        "copie cachee a",
    ),
    "subject": (
        "subject", "objet", "sujet", "betreff", "asunto", "assunto", "oggetto", "onderwerp",
        "emne", "ämne", "amne", "temat", "тема", "aihe", "tárgy", "targy", "konu", "主题",
        "件名",
    ),
    "reply-to": (
        "reply-to", "reply to", "répondre à", "repondre a", "antwort an", "responder a",
        "rispondi a", "antwoord aan", "antwoord naar", "responder para", "rispondi-a",
        "antwoord-naar", "responder-para",
    ),
    "other": (
        "attachments", "pièces jointes", "pieces jointes", "anlagen", "anhänge",
        "datos adjuntos", "adjuntos", "allegati", "bijlagen", "anexos", "importance",
        "wichtigkeit", "priorität", "importancia", "priorità", "priorita", "urgentie",
        "prioridade", "organization", "organisation", "organisatie", "organización",
        "organizzazione", "organização",
    ),
}  # fmt: skip
"""Each field's labels, lower-case."""

MAX_INLINE_CHARS = 1_000
"""Characters of a line searched for run-together fields."""

_BY_LABEL = {label: field for field, labels in FIELDS.items() for label in labels}


def alternation(fields: tuple[str, ...]) -> str:
    """A regex alternation of the labels of ``fields``, longest first."""
    labels = sorted({label for field in fields for label in FIELDS[field]}, key=len)
    return "|".join(re.escape(label).replace(r"\ ", r"\s") for label in reversed(labels))


FROM_LABELS = alternation(("from",))
OTHER_LABELS = alternation(("date", "to", "cc", "subject", "reply-to", "other"))
ALL_LABELS = alternation(tuple(FIELDS))


def field_of(label: str) -> str | None:
    """``from``, ``date``, ``to``, ``cc``, ``subject``, ``reply-to`` or ``other`` for a label
    (``other``: attachments, importance, organisation, which Outlook and Thunderbird add)."""
    return _BY_LABEL.get(" ".join(label.lower().split()))


MAX_LABEL_CHARS = max(len(label) for label in _BY_LABEL)
MAX_INLINE_COLONS = 16
"""Colons of a line looked at for a label before them."""
_COLON = re.compile(r"[ \t]?[:：]")
_GLUE = frozenset("@./-")
"""A capital after these is inside an address or a name, not a label's start."""


def _inline_labels(line: str) -> list[tuple[str, int, int]]:
    """(field, start, end) of each "Label:" inside a line, the label capitalised as every
    client writes it, even glued to the value before it ("…11:00 AMSubject:")."""
    found: list[tuple[str, int, int]] = []
    for count, colon in enumerate(_COLON.finditer(line)):
        if count >= MAX_INLINE_COLONS:
            break
        end = colon.start()
        for start in range(max(0, end - MAX_LABEL_CHARS), end):
            if not line[start].isupper() or (start and line[start - 1] in _GLUE):
                continue
            if end - start == 1 and start and line[start - 1].isupper():
                continue  # "…AMA:" is no Italian "A:"
            field = _BY_LABEL.get(line[start:end].lower())
            if field is not None:
                found.append((field, start, colon.end()))
                break
    return found


def split_inline(line: str) -> list[tuple[str, str]]:
    """The (field, value) pairs of a line holding several "Label: value" fields.

    A field seen twice is text of the value before it (a subject may say "Plan
    A: go"); a line with fewer than two colons yields none.
    """
    found: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    if line.count(":") + line.count("：") < 2:
        return []
    for field, start, end in _inline_labels(line[:MAX_INLINE_CHARS]):
        if field in seen or (not found and start > 4):
            continue
        seen.add(field)
        found.append((field, start, end))
    pairs: list[tuple[str, str]] = []
    for position, (field, _, end) in enumerate(found):
        stop = found[position + 1][1] if position + 1 < len(found) else len(line)
        pairs.append((field, line[end:stop].strip(" *\t")))
    return pairs
