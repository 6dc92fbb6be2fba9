"""Where a reply's own words end: quotes, attributions, header blocks and signatures.

People answer mailbot above (sometimes below) a quote of the validation mail,
and that quote contains both ACCEPT and REFUSE: whatever is not cut here ends
up read as a command. The rules are line based and locale aware, and every
one of them is bounded (line count, line length, window size) so that hostile
text costs linear time.

Vocabulary used below:

- *quote*: a line starting with ``>``;
- *attribution*: "On <date>, <person> wrote:" in its many languages, possibly
  wrapped over up to four lines;
- *header block*: the "From: / Sent: / To: / Subject:" lines Outlook and
  others put above the quoted or forwarded original (in many languages);
- *separator*: "-----Original Message-----", "---------- Forwarded message
  ---------" and their translations, or "Begin forwarded message:";
- *signature*: "-- ", "Sent from my iPhone" and the like, and a closing
  salutation ("Regards,", "Cordialement,") followed by a few short lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINES = 20_000
"""Lines of a text examined; the rest is treated as quoted."""
MAX_LINE_CHARS = 300
"""Longer lines are never attributions or headers."""
WINDOW = 4
"""Lines an attribution may be wrapped over."""

_INVISIBLE = re.compile("[\ufeff\u200b\u200c\u200d\u200e\u200f\u2060\u00ad]")
_QUOTED = re.compile(r"^[ \t]*>(?![ \t]*[:：][ \t]*$)")  # ">:" ends a wrapped attribution
_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?")

_ORIGINAL = (
    r"original message|original-nachricht|urspr[üu]ngliche nachricht|message d'origine"
    r"|message d.origine|message original|mensaje original|mensagem original"
    r"|messaggio originale|oorspronkelijk bericht|oprindelig meddelelse|oprindelig besked"
    r"|opprinnelig melding|ursprungligt meddelande|alkuper[äa]inen viesti"
    r"|wiadomo[śs][ćc] oryginalna|p[ůu]vodn[íi] zpr[áa]va|исходное сообщение"
    r"|eredeti [üu]zenet|orijinal mesaj|原始邮件|原始郵件|元のメッセージ|reply message"
)
_FORWARDED = (
    r"forwarded message|forwarded e-?mail|message transf[ée]r[ée]|message r[ée]exp[ée]di[ée]"
    r"|message transmis|weitergeleitete nachricht|mensaje reenviado|mensagem encaminhada"
    r"|mensagem reencaminhada|messaggio inoltrato|doorgestuurd bericht"
    r"|videresendt meddelelse|videresendt besked|videresendt melding"
    r"|vidarebefordrat meddelande|przekazana wiadomo[śs][ćc]|пересылаемое сообщение"
    r"|пересланное сообщение|v[äa]litetty viesti|tov[áa]bb[íi]tott [üu]zenet"
    r"|iletilen mesaj|转发的邮件|轉寄的郵件|転送されたメッセージ"
)
_FORWARD_INTRO = re.compile(
    r"^\s*(?:begin forwarded message|d[ée]but du message r[ée]exp[ée]di[ée]"
    r"|anfang der weitergeleiteten nachricht|inicio del mensaje reenviado"
    r"|comienzo del mensaje reenviado|in[íi]cio da mensagem reencaminhada"
    r"|inizio messaggio inoltrato|begin doorgestuurd bericht"
    r"|начало переадресованного сообщения|videresendt besked|vidarebefordrat brev"
    r"|message transf[ée]r[ée]|forwarded message)\s*[:：]?\s*$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    rf"^\s*[-_=~*]{{2,}}\s*(?P<phrase>{_ORIGINAL}|{_FORWARDED})\s*[:：]?\s*[-_=~*]*\s*$",
    re.IGNORECASE,
)
_FORWARD_PHRASE = re.compile(_FORWARDED, re.IGNORECASE)
_RULE = re.compile(r"^\s*[-_=*]{5,}\s*$")

FROM_KEYS = (
    r"from|de|von|van|da|fra|fr[åa]n|od|от|отправитель|l[äa]hett[äa]j[äa]|felad[óo]|kimden"
    r"|exp[ée]diteur|remitente|mittente|afzender|absender|nadawca|odes[íi]latel"
    r"|发件人|寄件者|差出人|보낸 사람|de la"
)
OTHER_KEYS = (
    r"sent|date|to|subject|cc|bcc|reply-to|sent at|envoy[ée]|envoy[ée] le|[àa]|objet|sujet|pour|cci"
    r"|r[ée]pondre [àa]|gesendet|datum|an|betreff|kopie|antwort an|verzonden|aan|onderwerp"
    r"|inviato|oggetto|data|per|sendt|til|emne|kopi|dato|skickat|till|[äa]mne|kopia|wys[łl]ano"
    r"|do|temat|отправлено|кому|тема|дата|копия|enviado|enviada|enviado el|para|asunto"
    r"|assunto|fecha|cc[oó]|l[äa]hetetty|vastaanottaja|aihe|p[äa]iv[äa]m[äa][äa]r[äa]"
    r"|elk[üu]ldve|c[íi]mzett|t[áa]rgy|g[öo]nderildi|kime|konu|tarih|发送时间|收件人|主题"
    r"|日期|送信日時|宛先|件名"
)
_KEY = re.compile(rf"^\s*\**\s*(?P<key>{FROM_KEYS}|{OTHER_KEYS})\s*\**\s*[:：]", re.IGNORECASE)
_FROM_KEY = re.compile(rf"^(?:{FROM_KEYS})$", re.IGNORECASE)

VERBS = (
    r"wrote|writes|a [ée]crit|[ée]crit|schrieb|escribi[óo]|ha scritto|scrisse|escreveu"
    r"|schreef|skrev|skriver|kirjoitti|napisa[łl]\(a\)|napisa[łl]a?|napsal\(a\)|napsala?"
    r"|написал\(а\)|написала?|писала?|έγραψε|yazd[ıi]|[íi]rta|a scris|写道|寫道|が書きました"
)
_LEADS = r"on|le|am|el|il|in data|em|op|den|dne|w dniu|dnia|p[åa]|в|од"
_VERB_COLON = re.compile(rf"(?:{VERBS})\s*[:：]\s*$", re.IGNORECASE)
_VERB_END = re.compile(rf"(?:^|\s)(?:{VERBS})\s*$", re.IGNORECASE)
_LEAD_VERB = re.compile(rf"^(?:{_LEADS})\s.*\b(?:{VERBS})\b.*[:：]\s*$", re.IGNORECASE)
_ADDRESS_COLON = re.compile(r"@[\w.-]+\s*>?\s*\)?\s*[:：]\s*$")
_STRONG_START = re.compile(rf"^(?:(?:{_LEADS})\s|\W*\d|[^\W\d_]{{1,12}}\.?,?\s+\d)", re.IGNORECASE)
_DIGIT = re.compile(r"\d")

_MOBILE = re.compile(
    r"^\s*(?:sent from|sent via|sent with|sent using|get outlook for|envoy[ée] de|envoy[ée] depuis"
    r"|envoy[ée] [àa] partir de|envoy[ée] avec|t[ée]l[ée]charger outlook|obtenir outlook"
    r"|gesendet von|gesendet mit|von meinem|enviado desde|enviado de|enviado do|inviato da"
    r"|verzonden met|verzonden vanaf|verstuurd vanaf|skickat fr[åa]n|sendt fra|wys[łl]ane z"
    r"|отправлено с|l[äa]hetetty)\b(?P<rest>.*)$",
    re.IGNORECASE,
)
_SIGNATURE_DELIMITER = re.compile(r"^[ \t]*--[ \t]*$")
_CLOSING = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many)\s+(?:regards|wishes)|regards|best|cheers|thanks"
    r"|thank you|many thanks|sincerely|yours(?: sincerely| truly)?|cordialement"
    r"|bien cordialement|tr[èe]s cordialement|bien [àa] (?:vous|toi)|salutations"
    r"|sinc[èe]res salutations|amiti[ée]s|bonne journ[ée]e|merci|mvh|med venlig hilsen"
    r"|venlig hilsen|hilsen|vennlig hilsen|med v[äa]nlig h[äa]lsning|v[äa]nliga h[äa]lsningar"
    r"|h[äa]lsningar|mit freundlichen gr[üu](?:ß|ss)en|freundliche gr[üu](?:ß|ss)e"
    r"|viele gr[üu](?:ß|ss)e|beste gr[üu](?:ß|ss)e|liebe gr[üu](?:ß|ss)e|gru(?:ß|ss)|lg"
    r"|met vriendelijke groet(?:en)?|vriendelijke groet(?:en)?|groeten|saludos(?: cordiales)?"
    r"|un saludo|atentamente|cordiali saluti|distinti saluti|saluti|pozdrawiam|z powa[żz]aniem"
    r"|с уважением|atenciosamente|abra[çc]os|cumprimentos|yst[äa]v[äa]llisin terveisin"
    r"|terveisin)\s*[,.!]*\s*$",
    re.IGNORECASE,
)
MAX_CLOSING_TAIL = 8


@dataclass(frozen=True)
class Cut:
    """Where quoted matter begins: the line index, what starts there, and its length."""

    index: int
    kind: str
    """``quote``, ``attribution``, ``header``, ``separator``, ``forward``, ``signature``."""
    length: int = 1


@dataclass(frozen=True)
class Split:
    new: str
    """The sender's own words."""
    quoted: str
    """Everything else: quotes, attributions, forwarded and signature lines."""
    cut: Cut | None
    lines: tuple[str, ...]
    """The normalised lines the indexes refer to."""
    bottom_posted: bool = False
    """The new text was found below the quote, not above it."""


def normalise(text: str) -> list[str]:
    """Lines with uniform line ends, no invisible characters, no-break spaces as spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text).replace("\u00a0", " ").replace("\u202f", " ")
    return text.split("\n")[:MAX_LINES]


def dequote(line: str) -> str:
    return _QUOTE_PREFIX.sub("", line, count=1)


def quote_depth(line: str) -> int:
    found = _QUOTE_PREFIX.match(line)
    return found.group().count(">") if found else 0


def split_reply(text: str) -> Split:
    """The new text of a reply and what was removed, with where the cut happened."""
    lines = normalise(text)
    cut = first_cut(lines)
    stop = cut.index if cut else len(lines)
    kept = list(range(stop))
    bottom = cut is not None and cut.kind in ("quote", "attribution") and not _has_text(lines, kept)
    if bottom and cut is not None:
        kept = _bottom_posted(lines, cut)
    kept = _without_signature(lines, kept)
    kept_set = set(kept)
    new = _tidy([lines[i] for i in kept])
    quoted = "\n".join(line for i, line in enumerate(lines) if i not in kept_set).strip()
    return Split(new, quoted, cut, tuple(lines), bottom_posted=bottom and bool(kept))


def first_cut(lines: list[str], start: int = 0) -> Cut | None:
    """The first line from which everything is quoted, forwarded or signature."""
    for index in range(start, len(lines)):
        found = cut_at(lines, index)
        if found is not None:
            return found
    return None


def cut_at(lines: list[str], index: int) -> Cut | None:
    line = lines[index]
    if not line.strip():
        return None
    if _QUOTED.match(line):
        return Cut(index, "quote")
    if len(line) > MAX_LINE_CHARS:
        return None
    if separator := _separator(line):
        return Cut(index, separator)
    if _RULE.match(line) and _header_block_after(lines, index + 1):
        return Cut(index, "header")
    if _KEY.match(line) and header_block_at(lines, index):
        return Cut(index, "header")
    if is_signature_line(line):
        return Cut(index, "signature")
    return _attribution(lines, index)


def _separator(line: str) -> str | None:
    if _FORWARD_INTRO.match(line):
        return "forward"
    found = _SEPARATOR.match(line)
    if found is None:
        return None
    return "forward" if _FORWARD_PHRASE.fullmatch(found.group("phrase")) else "separator"


def is_forward_marker(line: str) -> bool:
    return len(line) <= MAX_LINE_CHARS and _separator(dequote(line)) == "forward"


def header_key(line: str) -> str | None:
    """The header name a quoted-header line starts with ("From", "Objet"...), if any."""
    if len(line) > MAX_LINE_CHARS:
        return None
    found = _KEY.match(line)
    return found.group("key").lower() if found else None


def is_from_key(key: str) -> bool:
    return _FROM_KEY.match(key) is not None


def header_block_at(lines: list[str], index: int) -> bool:
    """Whether a From line (or any header line) starts a block of two or more headers."""
    keys: list[str] = []
    for line in lines[index : index + 9]:
        if not line.strip():
            break
        key = header_key(line)
        if key is not None:
            keys.append(key)
    if len(keys) < 2 or header_key(lines[index]) is None:
        return False
    return any(is_from_key(key) for key in keys)


def _header_block_after(lines: list[str], index: int) -> bool:
    for position in range(index, min(index + 3, len(lines))):
        if lines[position].strip():
            return header_block_at(lines, position)
    return False


def _attribution(lines: list[str], index: int) -> Cut | None:
    """An attribution starting at ``index``, possibly wrapped over several lines.

    A window that only matches because it swallowed the line before a real
    attribution ("Thanks!" + "On Mon, ... wrote:") is not one: the caller
    finds the attribution on the next line.
    """
    length = attribution_length(lines, index)
    if length is None:
        return None
    for start in range(index + 1, index + length):
        if _STRONG_START.match(lines[start].strip(" ->*")) and _is_attribution(
            " ".join(line.strip() for line in lines[start : index + length])
        ):
            return None
    return Cut(index, "attribution", length)


def attribution_length(lines: list[str], index: int) -> int | None:
    """How many lines from ``index`` make an attribution, or None."""
    parts: list[str] = []
    for line in lines[index : index + WINDOW]:
        if not line.strip() or len(line) > MAX_LINE_CHARS or _QUOTED.match(line):
            return None
        parts.append(line.strip())
        if _may_end_attribution(line) and _is_attribution(" ".join(parts)):
            return len(parts)
    return None


def _may_end_attribution(line: str) -> bool:
    """Cheap test first: attributions end with a colon or with the verb itself."""
    tail = line.rstrip(" -\t")
    return tail.endswith((":", "：")) or _VERB_END.search(tail[-40:]) is not None


def _is_attribution(window: str) -> bool:
    window = window.strip(" -\t*")
    if len(window) > 2 * MAX_LINE_CHARS or not _DIGIT.search(window):
        return False
    if _VERB_COLON.search(window) or _LEAD_VERB.match(window):
        return True
    if _VERB_END.search(window) and "@" in window:
        return True
    return _ADDRESS_COLON.search(window) is not None and header_key(window) is None


def is_signature_line(line: str) -> bool:
    if _SIGNATURE_DELIMITER.match(line):
        return True
    found = _MOBILE.match(line)
    if found is None:
        return False
    rest = re.sub(r"<[^<>]*>|\([^()]*\)", "", found.group("rest")).strip()
    return len(rest) <= 60 and "," not in rest and len(rest.split()) <= 8


def _has_text(lines: list[str], kept: list[int]) -> bool:
    return any(lines[i].strip() for i in kept)


def _bottom_posted(lines: list[str], cut: Cut) -> list[int]:
    """Unquoted lines after a ``>`` quote: the answer of a bottom- or inline-poster."""
    index = cut.index + (cut.length if cut.kind == "attribution" else 0)
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or not _QUOTED.match(lines[index]):
        return []
    kept: list[int] = []
    while index < len(lines):
        line = lines[index]
        if _QUOTED.match(line):
            index += 1
            continue
        found = cut_at(lines, index)
        if found is not None and found.kind == "attribution":
            index += found.length
            continue
        if found is not None:
            break
        kept.append(index)
        index += 1
    return kept


def _without_signature(lines: list[str], kept: list[int]) -> list[int]:
    """Drop a closing salutation and the few short lines after it (name, title, phone)."""
    content = [i for i in kept if lines[i].strip()]
    for position, index in enumerate(content):
        if position == 0 or not _CLOSING.match(lines[index]):
            continue
        tail = content[position + 1 :]
        if len(tail) <= MAX_CLOSING_TAIL and all(len(lines[i]) <= 100 for i in tail):
            return [i for i in kept if i < index]
    return kept


def _tidy(lines: list[str]) -> str:
    """Right-stripped lines, without leading or trailing blank and rule lines."""
    cleaned = [line.rstrip() for line in lines]
    while cleaned and (not cleaned[-1].strip() or _RULE.match(cleaned[-1])):
        cleaned.pop()
    while cleaned and not cleaned[0].strip():
        cleaned.pop(0)
    return "\n".join(cleaned)


def new_text(text: str) -> str:
    """The sender's own words: quotes, attributions, forwards and signatures removed."""
    return split_reply(text).new
