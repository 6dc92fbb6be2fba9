"""The words of free-text bounces, in the languages mail servers write them.

One place for the vocabulary, so that the rules in ``freetext`` read as
structure: who sent the report, what its subject says, which lines name the
failed recipients, whether it is a failure or only a delay. Each pattern is a
family of wordings (Exchange and Office 365 NDRs in their localised forms,
Google's "Address not found", Domino's "was not delivered to", Exim, qmail and
their translations by the French and German providers), never one sample.
"""

from __future__ import annotations

import re

DAEMON_LOCAL = re.compile(
    r"mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|mail[-_.]?delivery"
    r"|mail[-_.]?service|mail[-_.]?administrator|smtp|mail[-_.]?system|^bounces?$|^mailer$"
    r"|^microsoftexchange[0-9a-f]{32}$",
    re.IGNORECASE,
)
"""Local parts of the addresses reports come from (Exchange Online's is
``MicrosoftExchange`` followed by a 32-digit hexadecimal tenant key)."""

DAEMON_NAME = re.compile(
    r"mail delivery (?:system|subsystem|service)|mailer[- ]daemon|postmaster"
    r"|mail administrator|system administrator|mail system|delivery status"
    r"|courier mail server at|syst[èe]me de messagerie|service de messagerie"
    r"|administrateur de messagerie|e-?mail-system",
    re.IGNORECASE,
)

BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|delivery (?:status|failure|failed|has failed|problem"
    r"|notification|report|delayed|error|warning|incomplete)|mail delivery|failure notice"
    r"|failed mail|returned mail|returned to sender|could not be delivered|couldn't be delivered"
    r"|not (?:be )?delivered|mail system error|could not send message|^\s*\[bounce\]\s*$"
    r"|notice: mail delivery status|warning: delayed mail|warning: message|delayed mail"
    r"|user unknown|mailbox (?:unavailable|full)"
    r"|unzustellbar|nicht zustellbar|zustellung fehlgeschlagen|[üu]bermittlung verz[öo]gert"
    r"|non remis|non distribu|non d[ée]livr[ée]|[ée]chec (?:de (?:la )?)?(?:remise|distribution)"
    r"|notification d'[ée]chec|remise diff[ée]r[ée]e|courrier retard[ée]"
    r"|retourn[ée] [àa] l'exp[ée]diteur"
    r"|no se (?:pudo|puede) entregar|entrega retrasada|error (?:en la|de) entrega"
    r"|non recapitat|impossibile recapitare|onbestelbaar|niet bezorgd|olevererbar"
    r"|n[ãa]o (?:foi )?entregue|n[ãa]o foi poss[íi]vel entregar",
    re.IGNORECASE,
)

FAILURE_TEXT = re.compile(
    r"could not be delivered|couldn'?t be delivered|was not delivered|wasn'?t delivered"
    r"|not been delivered|undeliverable|delivery (?:to the following recipients? )?(?:has )?failed"
    r"|failed permanently|permanent (?:fatal )?errors?|address(?:\(es\)|es)? failed"
    r"|did not reach (?:the following recipient|some or all)|user unknown|unknown user|no such user"
    r"|mailbox (?:unavailable|is full|full)|quota exceeded|recipient address rejected"
    r"|host unknown|unrouteable|wasn'?t able to deliver|this is the (?:postfix program|mail system)"
    r"|will be retried|will (?:continue to )?retry"
    r"|not accepting mail|unable to deliver|delivery attempts|failed recipients"
    r"|cannot be delivered|can't be delivered|address not found|not listed in"
    r"|returned mail|delivery problem|message delayed|delayed \d+ hours"
    r"|n'a (?:pas )?pu [êe]tre (?:remis|distribu|d[ée]livr|transmis|livr|achemin)"
    r"|n'a pas [ée]t[ée] (?:remis|distribu|d[ée]livr)"
    r"|ne (?:peut|pourra) pas [êe]tre (?:remis|distribu)"
    r"|impossible de (?:remettre|distribuer|d[ée]livrer|livrer|transmettre)"
    r"|a [ée]chou[ée]|ont [ée]chou[ée]|erreur (?:permanente|d[ée]finitive)|adresse introuvable"
    r"|nicht\b[^.\n]{0,60}\bzugestellt|konnte nicht (?:zugestellt|[üu]bermittelt|ausgeliefert)"
    r"|ist fehlgeschlagen|permanenter fehler|adresse nicht gefunden"
    r"|no (?:se )?(?:ha )?(?:pudo|podido|puede) (?:ser )?entrega|no se ha entregado"
    r"|imposible entregar|error en la entrega|error permanente"
    r"|no se ha encontrado la direcci[óo]n"
    r"|\b5\d\d[ -]#?5\.\d+\.\d+",
    re.IGNORECASE,
)
"""A failure told in words (or a delay, which is a failure for now)."""

DELIVERED = re.compile(
    r"successfully (?:delivered|relayed)|(?:was|has been) delivered to"
    r"|\((?:success|relayed|delivered)\)"
    r"|delivery to (?:these|the following) recipients (?:or groups )?(?:is|was) complete"
    r"|a [ée]t[ée] (?:remis|distribu[ée]|d[ée]livr[ée]) (?:aux|au|[àa])|erfolgreich zugestellt"
    r"|se entreg[óo] (?:a|correctamente)|se ha entregado correctamente",
    re.IGNORECASE,
)
"""A notice that mail arrived (a success DSN asked for, a relay notice): not a bounce."""

DELAY_WORDS = re.compile(
    r"\bdelay(?:ed)?\b|not yet been delivered|will (?:continue to )?(?:be )?retr|still trying"
    r"|remise diff[ée]r[ée]e|retard[ée]|verz[öo]gert|retrasad",
    re.IGNORECASE,
)
"""Weak delay words: they count when nothing in the report says it failed."""

DELAY_NOTICE = re.compile(
    r"not yet been delivered|hasn'?t been delivered yet|has not been delivered yet"
    r"|warning (?:message )?only|this is only a warning|mail delivery warning"
    r"|delivery (?:is )?delayed to|still being retried|will keep trying|delivery incomplete"
    r"|temporary problem delivering|delivery attempts will continue|will continue to be attempted"
    r"|message still undelivered after|delays in delivering your message"
    r"|pas encore [ée]t[ée] (?:remis|distribu|d[ée]livr)|tentatives de remise se poursuiv"
    r"|la remise est diff[ée]r[ée]e|ceci est un avertissement|nouvelles tentatives (?:seront|de)"
    r"|noch nicht zugestellt|nur eine warnung|weiterhin versucht|ist verz[öo]gert"
    r"|a[úu]n no se ha entregado|se seguir[áa] intentando|se ha retrasado",
    re.IGNORECASE,
)
"""A report that says in so many words that the server is still trying."""

GIVEN_UP = re.compile(
    r"permanent (?:fatal )?error|failed permanently|permanent failure|given up|gave up|giving up"
    r"|not going to try again|erreur (?:permanente|d[ée]finitive)|ne sera plus renvoy"
    r"|permanenter fehler|error permanente",
    re.IGNORECASE,
)
"""A report that says the server stopped trying: never a delay."""

PERMANENT_TEXT = re.compile(
    r"failed permanently|permanent (?:fatal )?error|could not be delivered|has failed"
    r"|address(?:\(es\)|es)? failed|giving up|gave up|\b5\.\d+\.\d+",
    re.IGNORECASE,
)

RECIPIENT_INTRO = re.compile(
    r"following (?:recipients?|address(?:\(es\)|es)?)|recipient\(s\)|failed recipients"
    r"|could not be delivered to|delivery to the following"
    r"|recipients or (?:groups|distribution lists)"
    r"|was not delivered to|message has not yet been delivered is|address(?:es)? to which"
    r"|destinataires? ou groupes|destinataires? suivants?|adresses? suivantes?"
    r"|n'a pas [ée]t[ée] remis [àa]|empf[äa]nger oder gruppen"
    r"|folgende(?:n)? (?:empf[äa]nger|adressen?)|wurde nicht zugestellt an"
    r"|destinatarios o grupos|siguientes? destinatarios?",
    re.IGNORECASE,
)
"""Lines after which a report lists the addresses it is about."""

RECIPIENT_FIELD = re.compile(
    r"^\s*(?:>>>\s*)?(?:rcpt to|recipient address|final-recipient|original-recipient"
    r"|failed recipient)\s*:\s*(?:rfc822\s*;)?\s*<?",
    re.IGNORECASE,
)
"""A labelled recipient in a report's text (James's "RCPT TO:", Office 365's
"Recipient Address:", an RFC 3464 field pasted as text)."""

PHRASE_STATUS = (
    (re.compile(r"unrouteable (?:mail )?domain|host unknown|domain not found", re.I), "5.1.2"),
    (re.compile(r"user unknown|unknown user|no such user|does not exist|not recognized"
                r"|not listed in|no mailbox here", re.I), "5.1.1"),
    (re.compile(r"could not initiate smtp conversation|connection (?:timed out|refused)", re.I),
     "5.3.2"),
    (re.compile(r"mailbox (?:is )?full|quota exceeded|over quota", re.I), "5.2.2"),
    (re.compile(r"relay(?:ing)? denied|access denied|blocked|spam", re.I), "5.7.1"),
)  # fmt: skip
"""Enhanced status codes for reports that give only words."""
