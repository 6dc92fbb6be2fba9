"""Reply and forward prefixes of subjects: the one list every part of mailparse
(and the command finder) uses, so that what counts as a forward is also what
is stripped from a forwarded subject.

Mail clients put these before a subject, in their users' languages, repeated
("TR: RE: Fwd:"), with a counter ("Re[2]:") or a full-width colon ("転送：").
"""

from __future__ import annotations

import re

REPLY_PREFIXES = r"re|aw|sv|antw|ref|réf|rép|rep|odp|ynt|ответ"
"""What mail clients put before the subject of a reply, in their languages."""
FORWARD_PREFIXES = r"fwd?|fw-d|tr|trs|wg|rv|enc|vs|vb|doorst|pd|i|fs|rif|пер|переслать|転送|转发"
"""What mail clients put before the subject of a forward ("VS:" is both)."""
_NUMBERED_COLON = r"\s*(?:\[\d+\])?\s*[:：]"
SUBJECT_PREFIX = re.compile(
    rf"^\s*(?:(?:{REPLY_PREFIXES}|{FORWARD_PREFIXES}){_NUMBERED_COLON}\s*)+", re.IGNORECASE
)
""""Re:", "TR:", "AW:", "SV:", "Fwd:"... as mail clients put them before a subject, repeated."""
FORWARD_SUBJECT = re.compile(
    rf"^\s*(?:\[[^\]]{{0,40}}\]\s*)?(?:{FORWARD_PREFIXES}){_NUMBERED_COLON}", re.IGNORECASE
)
"""A forward's subject, behind an optional list tag such as "[EXTERNAL]"."""


def strip_subject_prefixes(subject: str) -> str:
    """A subject without its reply and forward prefixes."""
    return SUBJECT_PREFIX.sub("", subject).strip()
