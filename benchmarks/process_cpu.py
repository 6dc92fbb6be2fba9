"""CPU time of ``mailbot process`` for one message, beside ``python -c pass``.

An MTA's pipe starts ``mailbot process`` once per message, so its start-up is
paid on every message. This runs, in one go and in a throwaway directory:
``python -c pass``, ``mailbot --help``, ``mailbot process`` (parse, act and
send, into a Maildir) and ``mailbot process --store-only`` (store only, for
``mailbot serve`` to act on), each on a fresh ~1.5 KB message, and prints the
median user+system CPU of each (``getrusage`` of the children), in seconds and
as a multiple of ``python -c pass``: the ratio is the figure to compare
between machines.

On SQLite always; on PostgreSQL too with ``--postgres URL`` (a database this
may initialise), or when a local server can be started from the PostgreSQL
binaries (``initdb``) found on this machine.

    python benchmarks/process_cpu.py [--runs 7] [--postgres postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAILBOT = str(Path(sys.executable).parent / "mailbot")
CUSTOMERS = {
    "contacts": [
        {"handle": "AM1-MB", "email": "alice@client.test", "name": "Alice Martin"},
        {"handle": "BB2-MB", "email": "bob@client.test", "name": "Bob Brown"},
    ],
    "services": [
        {
            "name": "client.test",
            "kind": "domain",
            "admin": "AM1-MB",
            "tech": "BB2-MB",
            "billing": "BB2-MB",
        },
    ],
}


def message(n: int) -> bytes:
    """A STATUS request from a known contact, about 1.5 KB, unique by its Message-ID."""
    head = (
        "From: Alice Martin <alice@client.test>\r\nTo: changes@mailbot.localhost\r\n"
        "Subject: STATUS\r\nDate: Mon, 2 Mar 2026 09:00:00 +0000\r\n"
        f"Message-ID: <bench-{n}.{os.getpid()}@client.test>\r\n"
        "Received: from mx.client.test by mx.mailbot.localhost; Mon, 2 Mar 2026 09:00:01 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    quote = "> Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n" * 18
    return (head + "STATUS\r\n\r\nAlice\r\n\r\n" + quote).encode()


def cpu_of(command: list[str], cwd: Path, stdin: bytes, env: dict[str, str]) -> float:
    """User + system CPU seconds of one run of ``command``; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.decode(errors='replace')}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(workdir: Path, env: dict[str, str]) -> None:
    (workdir / "customers.json").write_text(json.dumps(CUSTOMERS))
    for step in (["init"], ["import", "customers.json"]):
        cpu_of([MAILBOT, *step], workdir, b"", env)


def measure(label: str, workdir: Path, env: dict[str, str], runs: int) -> list[tuple[str, float]]:
    prepare(workdir, env)
    counter = iter(range(10**9))
    cases = [
        (f"mailbot process ({label})", [MAILBOT, "process"]),
        (f"mailbot process --store-only ({label})", [MAILBOT, "process", "--store-only"]),
    ]
    results = []
    for name, command in cases:
        times = [cpu_of(command, workdir, message(next(counter)), env) for _ in range(runs)]
        results.append((name, statistics.median(times)))
    return results


def report(rows: list[tuple[str, float]]) -> None:
    base = rows[0][1] or 1e-9
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  {'CPU s':>7}  {'x python -c pass':>16}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f}  {seconds / base:16.1f}")


@contextmanager
def local_postgres(keep: Path | None = None) -> Iterator[str | None]:
    """A PostgreSQL server on a free loopback port, if one can be started: a
    throwaway one, or with ``keep`` one whose data directory stays there (made
    on first use) for the next run."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    initdb = found[0] if found else (Path(p) if (p := shutil.which("initdb")) else None)
    if initdb is None:
        yield None
        return
    bindir = initdb.parent
    root = keep or Path(tempfile.mkdtemp(prefix="mailbot-bench-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    try:
        if not (data / "PG_VERSION").exists():
            command = [str(initdb), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
            subprocess.run(
                [*as_user, *command],
                check=True,
                capture_output=True,
            )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
        started = subprocess.run(
            [*pg_ctl, "-l", str(root / "log"), "-w", "-o", options, "start"],
            capture_output=True,
            check=False,
        )
        yield (
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            if (started.returncode == 0)
            else None
        )
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str, name: str) -> Iterator[str]:
    """A new, empty database ``name`` on ``server`` (a URL from
    ``local_postgres``, or ``--postgres``: with or without a database in it),
    dropped afterwards."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(server)
    admin = url.set(drivername="postgresql", database=url.database or "postgres")
    admin_url = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (median)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database to use")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
    with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as temporary:
        workdir = Path(temporary)
        python = [sys.executable, "-c", "pass"]
        bare = [cpu_of(python, workdir, b"", env) for _ in range(args.runs)]
        rows = [("python -c pass", statistics.median(bare))]
        helps = [cpu_of([MAILBOT, "--help"], workdir, b"", env) for _ in range(args.runs)]
        rows.append(("mailbot --help", statistics.median(helps)))
        rows += measure("SQLite", workdir, env, args.runs)
        with local_postgres() if not args.postgres else _given(args.postgres) as url:
            if url is None:
                print("PostgreSQL: no --postgres URL and no local server could be started")
            else:
                pg_dir = workdir / "pg"
                pg_dir.mkdir()
                rows += measure(
                    "PostgreSQL", pg_dir, {**env, "MAILBOT_DATABASE__URL": url}, args.runs
                )
    report(rows)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
