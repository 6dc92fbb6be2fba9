"""Header blocks and separators: the lines clients put above a quoted or forwarded original.

- *header block*: the "From: / Sent: / To: / Subject:" lines Outlook and
  others put above the quoted or forwarded original, in many languages;
- *separator*: "-----Original Message-----", "---------- Forwarded message
  ---------" and their translations, or "Begin forwarded message:".
"""

from __future__ import annotations

import re

from mailbot.mailparse import labels
from mailbot.mailparse.lines import MAX_LINE_CHARS, dequote

_ORIGINAL = (
    r"original message|original-nachricht|urspr[üu]ngliche nachricht|message d'origine"
    r"|message d.origine|message original|mensaje original|mensagem original"
    r"|messaggio originale|oorspronkelijk bericht|oprindelig meddelelse|oprindelig besked"
    r"|opprinnelig melding|ursprungligt meddelande|alkuper[äa]inen viesti"
    r"|wiadomo[śs][ćc] oryginalna|p[ůu]vodn[íi] zpr[áa]va|исходное сообщение"
    r"|eredeti [üu]zenet|orijinal mesaj|原始邮件|原始郵件|元のメッセージ|reply message"
    r"|mail original|mail d.origine|urspr[üu]ngliche (?:e-?)?mail|e-?mail original"
    r"|originalnachricht|origineel bericht|mensaje de origen|messaggio di origine"
)
_FORWARDED = (
    r"forwarded message|forwarded e-?mail|message transf[ée]r[ée]|message r[ée]exp[ée]di[ée]"
    r"|message transmis|weitergeleitete nachricht|mensaje reenviado|mensagem encaminhada"
    r"|mensagem reencaminhada|messaggio inoltrato|doorgestuurd bericht"
    r"|videresendt meddelelse|videresendt besked|videresendt melding"
    r"|vidarebefordrat meddelande|przekazana wiadomo[śs][ćc]|пересылаемое сообщение"
    r"|пересланное сообщение|v[äa]litetty viesti|tov[áa]bb[íi]tott [üu]zenet"
    r"|iletilen mesaj|转发的邮件|轉寄的郵件|転送されたメッセージ"
    r"|mail transf[ée]r[ée]|e-?mail transf[ée]r[ée]|weitergeleitete (?:e-?)?mail"
    r"|correo reenviado|e-?mail inoltrata|mail inoltrata"
    r"|doorgestuurde? (?:e-?mail|bericht)|e-?mail encaminhado|mensagem reenviada"
    r"|edelleenl[äa]hetetty viesti|p[řr]eposlan[áa] zpr[áa]va|wiadomo[śs][ćc] przes[łl]ana dalej"
    r"|перенаправленное сообщение|mesaj redirec[țt]ionat"
)
_FORWARD_INTRO = re.compile(
    r"^\s*(?:begin forwarded message|d[ée]but du message r[ée]exp[ée]di[ée]"
    r"|anfang der weitergeleiteten nachricht|inicio del mensaje reenviado"
    r"|comienzo del mensaje reenviado|in[íi]cio da mensagem reencaminhada"
    r"|inizio (?:del )?messaggio inoltrato|begin doorgestuurd bericht"
    r"|in[íi]cio da mensagem encaminhada|in[íi]cio da mensagem reenviada"
    r"|begin van doorgestuurd bericht|beginn der weitergeleiteten nachricht"
    r"|d[ée]but du message transf[ée]r[ée]|start p[åa] videresendt besked|vidarebefordrat mejl"
    r"|za[čc][áa]tek p[řr]epos[íi]lan[ée] zpr[áa]vy|pocz[ąa]tek przekazywanej wiadomo[śs]ci"
    r"|tov[áa]bb[íi]tott lev[ée]l kezdete|videresendt melding|v[äa]litetty viesti alkaa"
    r"|начало переадресованного сообщения|videresendt besked|vidarebefordrat brev"
    rf"|{_FORWARDED})\s*[:：]?\s*$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    rf"^\s*[-_=~*]{{2,}}\s*(?P<phrase>{_ORIGINAL}|{_FORWARDED})"
    r"(?:\s+(?:from|de|von|van|da)\s+[^-]{1,120})?\s*[:：]?\s*[-_=~*]*\s*$",
    re.IGNORECASE,
)
"""A separator line; Mutt and Horde name the sender in it ("Forwarded message from …")."""
_SEPARATOR_HEAD = re.compile(
    rf"^\s*[-_=~*]{{2,}}\s*(?P<phrase>{_ORIGINAL}|{_FORWARDED})\s*[:：]?\s*[-_=~*]{{2,}}"
    r"(?P<rest>\s*\S.*)$",
    re.IGNORECASE,
)
"""A separator with the header block run on after it, on the same line."""
_FORWARD_PHRASE = re.compile(_FORWARDED, re.IGNORECASE)

FROM_KEYS = labels.FROM_LABELS
OTHER_KEYS = labels.OTHER_LABELS
_KEY = re.compile(
    rf"^\s*\**\s*(?P<key>{FROM_KEYS}|{OTHER_KEYS})\s*\**(?:\s*[:：]|[ ]*\t)", re.IGNORECASE
)
_FROM_KEY = re.compile(rf"^(?:{FROM_KEYS})$", re.IGNORECASE)


def separator_kind(line: str) -> str | None:
    """``forward`` or ``separator`` when the line is one, else None."""
    if _FORWARD_INTRO.match(line):
        return "forward"
    found = _SEPARATOR.match(line) or _run_on_separator(line)
    if found is None:
        return None
    return "forward" if _FORWARD_PHRASE.fullmatch(found.group("phrase")) else "separator"


def _run_on_separator(line: str) -> re.Match[str] | None:
    """A separator followed on its line by the header block (HTML turned into text)."""
    found = _SEPARATOR_HEAD.match(line)
    return found if found is not None and header_key(found.group("rest")) else None


def run_on_block(line: str) -> str | None:
    """The header block written on a separator's own line, if there is one."""
    found = _SEPARATOR_HEAD.match(line) if len(line) <= MAX_LINE_CHARS else None
    if found is None or header_key(found.group("rest")) is None:
        return None
    return found.group("rest").strip()


def is_forward_marker(line: str) -> bool:
    return len(line) <= MAX_LINE_CHARS and separator_kind(dequote(line)) == "forward"


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
    first = lines[index] if index < len(lines) else ""
    if header_key(first) is not None:
        inline = [field for field, _ in labels.split_inline(first)]
        if len(inline) >= 3:  # a block run together on one line by HTML-to-text
            return "from" in inline
    if len(keys) < 2 or header_key(first) is None:
        return False
    return any(is_from_key(key) for key in keys)


def header_block_after(lines: list[str], index: int) -> bool:
    """Whether a header block starts within the next few lines (below a rule line)."""
    for position in range(index, min(index + 3, len(lines))):
        if lines[position].strip():
            return header_block_at(lines, position)
    return False
