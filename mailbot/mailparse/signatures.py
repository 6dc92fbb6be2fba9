"""Signatures: "-- ", "Sent from my iPhone" and the like, and a closing salutation
("Regards,", "Cordialement,") followed by a few short lines.
"""

from __future__ import annotations

import re

_MOBILE = re.compile(
    r"^\s*(?:sent from|sent via|sent with|sent using|get outlook for|envoy[ée] de|envoy[ée] depuis"
    r"|envoy[ée] [àa] partir de|envoy[ée] avec|t[ée]l[ée]charger outlook|obtenir outlook"
    r"|gesendet von|gesendet mit|von meinem|enviado desde|enviado de|enviado do|inviato da"
    r"|verzonden met|verzonden vanaf|verstuurd vanaf|skickat fr[åa]n|sendt fra|wys[łl]ane z"
    r"|отправлено с|l[äa]hetetty|inviato dal|inviato con|enviado con|enviado com|verstuurd met"
    r"|verzonden via|von yahoo mail|diese nachricht wurde von meinem|holen sie sich outlook"
    r"|outlook f[üu]r (?:android|ios)|obtener outlook|descargar outlook|scarica outlook"
    r"|baixar o outlook|baixe o outlook|obter o outlook|download outlook"
    r"|outlook voor (?:android|ios)"
    r")\b(?P<rest>.*)$",
    re.IGNORECASE,
)
_SIGNATURE_DELIMITER = re.compile(r"^[ \t]*--[ \t]*$")
_CLOSING = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many)\s+(?:regards|wishes)|regards|best|cheers|thanks"
    r"|thank you|many thanks|sincerely|yours(?: sincerely| truly| faithfully)?|cordialement"
    r"|bien cordialement|tr[èe]s cordialement|bien [àa] (?:vous|toi)|salutations"
    r"|sinc[èe]res salutations|amiti[ée]s|bonne journ[ée]e|merci|mvh|med venlig hilsen"
    r"|venlig hilsen|hilsen|vennlig hilsen|med v[äa]nlig h[äa]lsning|v[äa]nliga h[äa]lsningar"
    r"|h[äa]lsningar|mit freundlichen gr[üu](?:ß|ss)en|freundliche gr[üu](?:ß|ss)e"
    r"|viele gr[üu](?:ß|ss)e|beste gr[üu](?:ß|ss)e|liebe gr[üu](?:ß|ss)e|gru(?:ß|ss)|lg"
    r"|met vriendelijke groet(?:en)?|vriendelijke groet(?:en)?|groeten|saludos(?: cordiales)?"
    r"|un saludo|atentamente|cordiali saluti|distinti saluti|saluti|pozdrawiam|z powa[żz]aniem"
    r"|с уважением|atenciosamente|abra[çc]os|cumprimentos|yst[äa]v[äa]llisin terveisin"
    r"|terveisin|all the best|best wishes|take care|thanks (?:a lot|again|in advance)"
    r"|thank you very much|cdlt|bien [àa] vous|[àa] bient[ôo]t|belle journ[ée]e"
    r"|bonne (?:soir[ée]e|fin de journ[ée]e)|merci (?:d'avance|beaucoup|bien)"
    r"|salutations distingu[ée]es|mfg|herzliche gr[üu](?:ß|ss)e|sch[öo]ne gr[üu](?:ß|ss)e"
    r"|gr[üu](?:ß|ss)e|danke(?: sch[öo]n)?|vielen dank|besten dank|saludos cordiales"
    r"|un (?:fuerte )?abrazo|abrazos|gracias|muchas gracias|atte|cordialmente|un saluto"
    r"|buona giornata|grazie(?: mille)?|a presto|groetjes|hartelijke groet(?:en)?|mvg"
    r"|bedankt|dank je wel|alvast bedankt|obrigad[oa]|abra[çc]o|att|um abra[çc]o"
    r"|(?:com os )?melhores cumprimentos|at[ée] breve)\s*[,.!]*\s*$",
    re.IGNORECASE,
)
MAX_CLOSING_TAIL = 8


def is_signature_line(line: str) -> bool:
    if _SIGNATURE_DELIMITER.match(line):
        return True
    found = _MOBILE.match(line)
    if found is None:
        return False
    rest = re.sub(r"<[^<>]*>|\([^()]*\)", "", found.group("rest")).strip()
    return len(rest) <= 60 and "," not in rest and len(rest.split()) <= 8


def without_signature(lines: list[str], kept: list[int]) -> list[int]:
    """Drop a closing salutation and the few short lines after it (name, title, phone)."""
    content = [i for i in kept if lines[i].strip()]
    for position, index in enumerate(content):
        if position == 0 or not _CLOSING.match(lines[index]):
            continue
        tail = content[position + 1 :]
        if len(tail) <= MAX_CLOSING_TAIL and all(len(lines[i]) <= 100 for i in tail):
            return [i for i in kept if i < index]
    return kept
