"""mailparse never raises and stays fast, whatever arrives: fuzzed with Hypothesis.

Every example must parse without an exception *and* without falling back to
the degraded reading (``parse_error``), which would hide a bug behind the
safety net, and within ``CPU_LIMIT`` seconds of CPU time of the thread that
parses (``time.thread_time``): a budget that neither other processes on a busy
machine nor other threads of this one eat into, and that a super-linear
blow-up on megabytes of input exceeds by far. How fast parsing is, is
measured by ``benchmarks/mail_understanding.py``, not here.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbot import mailparse
from mailbot.mailparse import mime

CPU_LIMIT = 5.0
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

CHARSETS = st.sampled_from(
    ["utf-8", "iso-8859-1", "windows-1252", "us-ascii", "x-unknown", "utf-7", "punycode", "zlib",
     "shift_jis", "gb2312", "koi8-r", "utf-16", "bogus\"charset", "", "unicode-1-1-utf-7"]
)  # fmt: skip
ENCODINGS = st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "junk"])
TEXT_TYPES = st.sampled_from(["text/plain", "text/html", "text/rfc822-headers", "text/x-junk"])
CONTAINERS = st.sampled_from(
    ["multipart/mixed", "multipart/alternative", "multipart/report; report-type=delivery-status",
     "multipart/related", "message/rfc822", "message/delivery-status"]
)  # fmt: skip
SNIPPETS = st.sampled_from(
    ["ACCEPT", "REFUSE 7KQ2-X9JM-4TRD-8WPA-3HNB", "> quoted",
     "On Mon, 2 Mar 2026, a <a@b.c> wrote:", "From: x <x@y.z>", "Sent: Monday", "-- ",
     "Sent from my iPhone", "<blockquote>", "</div>",
     "<!--", "=?utf-8?q?caf=C3=A9?=", "Final-Recipient: rfc822; a@b.c", "Action: failed",
     "Status: 5.1.1", "---------- Forwarded message ---------", "Begin forwarded message:",
     "\u00a0", "\ufeff", "\r", "=\r\n", "=XX", "&#0;", "\x00", "<a href='x'>"]
)  # fmt: skip


def parse_quickly(raw: bytes) -> mailparse.ParsedMail:
    started = time.thread_time()
    parsed = mailparse.parse(raw)
    used = time.thread_time() - started
    assert used < CPU_LIMIT, f"{used:.2f}s of CPU for {len(raw)} bytes"
    assert parsed.parse_error == "", parsed.parse_error
    assert len(parsed.text) <= mime.MAX_TEXT_CHARS
    return parsed


@FAST
@given(st.binary(max_size=4_000))
def test_random_bytes(raw: bytes) -> None:
    parse_quickly(raw)


@FAST
@given(st.lists(st.one_of(SNIPPETS, st.text(max_size=40)), max_size=40))
def test_random_text_bodies(pieces: list[str]) -> None:
    body = "\n".join(pieces).encode("utf-8", errors="surrogatepass")
    parse_quickly(b"From: a@example.org\r\nSubject: x\r\n\r\n" + body)
    parse_quickly(b"From: a@example.org\r\nContent-Type: text/html\r\n\r\n" + body)


@st.composite
def mime_trees(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A random MIME part: nested containers, odd charsets and transfer encodings."""
    if depth < 4 and draw(st.booleans()):
        container = draw(CONTAINERS)
        boundary = draw(st.sampled_from(["b", "b" * 70, "=_x", "--", "b c"]))
        children = draw(st.lists(mime_trees(depth + 1), max_size=4))
        head = f'Content-Type: {container}; boundary="{boundary}"\r\n\r\n'.encode()
        parts = b"".join(
            b"--" + boundary.encode() + b"\r\n" + child + b"\r\n" for child in children
        )
        closing = b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b""
        return head + parts + closing
    kind = draw(TEXT_TYPES)
    charset = draw(CHARSETS)
    encoding = draw(ENCODINGS)
    body = draw(st.one_of(st.binary(max_size=300), SNIPPETS.map(str.encode)))
    disposition = draw(st.sampled_from(["", "Content-Disposition: attachment\r\n"]))
    return (
        f"Content-Type: {kind}; charset={charset}\r\nContent-Transfer-Encoding: {encoding}\r\n"
        f"{disposition}\r\n"
    ).encode() + body


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    names = st.sampled_from(
        ["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References",
         "Auto-Submitted", "Precedence", "List-Id", "X-Failed-Recipients", "Return-Path",
         "X-Auto-Response-Suppress", "Date", "Delivered-To"]
    )  # fmt: skip
    values = st.one_of(SNIPPETS, st.text(max_size=60), st.sampled_from(["=?bogus?q?x?=", "<>"]))
    pairs = draw(st.lists(st.tuples(names, values), max_size=12))
    lines = [f"{name}: {value}".encode("utf-8", errors="surrogatepass") for name, value in pairs]
    return b"\r\n".join(lines) + b"\r\n"


@FAST
@given(headers(), mime_trees())
def test_random_mime_trees(head: bytes, tree: bytes) -> None:
    parse_quickly(head + b"MIME-Version: 1.0\r\n" + tree)


@settings(max_examples=8, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=4), st.sampled_from([b"Subject", b"X-Junk", b"To"]))
def test_huge_headers(megabytes: int, name: bytes) -> None:
    value = b"=?utf-8?q?a?= " * (megabytes * 70_000)
    parsed = parse_quickly(
        b"From: a@example.org\r\n" + name + b": " + value + b"\r\n\r\nACCEPT\r\n"
    )
    assert len(parsed.subject) <= mailparse.MAX_SUBJECT_CHARS


@settings(max_examples=6, deadline=None, database=None)
@given(st.integers(min_value=10, max_value=5_000))
def test_deep_nesting(depth: int) -> None:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
        for i in range(depth)
    )
    parse_quickly(b"From: a@example.org\r\n" + head + b"Content-Type: text/plain\r\n\r\nhi\r\n")


@settings(max_examples=6, deadline=None, database=None)
@given(st.integers(min_value=100, max_value=60_000))
def test_many_parts(count: int) -> None:
    part = b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n" + part * count
    parse_quickly(raw)
    assert sum(1 for _ in mime.walk(mime.load(raw))) <= mime.MAX_PARTS


@settings(max_examples=10, deadline=None, database=None)
@given(
    st.sampled_from(
        ["<!--", "<", "<a", "<blockquote>", "<div>", "&#", "<p>x</p>", "</div", "<![CDATA[",
         "<a href='", "<td>", "> quoted\n", "On 1 x wrote:\n", "From: x\n", "a-", "ACCEPT "]
    ),
    st.sampled_from(["text/html", "text/plain"]),
)  # fmt: skip
def test_pathological_repetition(unit: str, kind: str) -> None:
    body = (unit * (3_000_000 // len(unit))).encode()
    parse_quickly(b"From: a@example.org\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + body)
