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


def _capitalised(label: str) -> str:
    """A label as written inside run-together text: its first letter a capital."""
    first, rest = label[:1], re.escape(label[1:]).replace(r"\ ", r"\s")
    return f"{re.escape(first.upper())}{rest}" if first.isalpha() else re.escape(label)


_MULTI = "|".join(
    _capitalised(label) for label in sorted(_BY_LABEL, key=len, reverse=True) if len(label) > 1
)
INLINE = re.compile(rf"(?<![@./\-])(?:{_MULTI}|CC|(?<![A-Z])[AÀ])\s?[:：]")
"""A label inside a line, where webmail HTML turned into text ran the fields together.

Matched case-sensitively with a capital first letter, as every client writes
its labels, so that ``…11:00 AMSubject:`` and ``Bob ClientTo:`` split but the
words of a value do not.
"""


def split_inline(line: str) -> list[tuple[str, str]]:
    """The (field, value) pairs of a line holding several "Label: value" fields.

    A field seen twice is text of the value before it (a subject may say "Plan
    A: go"); a line with fewer than two fields yields one pair or none.
    """
    found: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for match in INLINE.finditer(line[:MAX_INLINE_CHARS]):
        field = field_of(match.group().rstrip(":：").strip())
        if field is None or field in seen or (not found and match.start() > 4):
            continue
        seen.add(field)
        found.append((field, match.start(), match.end()))
    pairs: list[tuple[str, str]] = []
    for position, (field, _, end) in enumerate(found):
        stop = found[position + 1][1] if position + 1 < len(found) else len(line)
        pairs.append((field, line[end:stop].strip(" *\t")))
    return pairs
