"""Header blocks and separators: the lines clients put above a quoted or forwarded original.

- *header block*: the "From: / Sent: / To: / Subject:" lines Outlook and
  others put above the quoted or forwarded original, in many languages;
- *separator*: "-----Original Message-----", "---------- Forwarded message
  ---------" and their translations, or "Begin forwarded message:".
"""

from __future__ import annotations

import re

from mailbot.mailparse.lines import MAX_LINE_CHARS, dequote

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


def separator_kind(line: str) -> str | None:
    """``forward`` or ``separator`` when the line is one, else None."""
    if _FORWARD_INTRO.match(line):
        return "forward"
    found = _SEPARATOR.match(line)
    if found is None:
        return None
    return "forward" if _FORWARD_PHRASE.fullmatch(found.group("phrase")) else "separator"


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
    if len(keys) < 2 or header_key(lines[index]) is None:
        return False
    return any(is_from_key(key) for key in keys)


def header_block_after(lines: list[str], index: int) -> bool:
    """Whether a header block starts within the next few lines (below a rule line)."""
    for position in range(index, min(index + 3, len(lines))):
        if lines[position].strip():
            return header_block_at(lines, position)
    return False
