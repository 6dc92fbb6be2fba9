"""The benchmarks, run as an operator would, with small counts (SQLite): each
measures end to end and prints its rows with numbers. No bound on the figures
themselves: a busy machine may make them anything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"(\d+(?:\.\d+)?)"


def test_the_throughput_benchmark_prints_a_measured_row() -> None:
    """Every reply it sends gets its confirmation back through the relay, and the
    table shows the sink's rates, the ratios and the latency percentiles (at
    half the sink's rate, and at half mailbot's own); the CPU a reply took is
    measured in serve's processes."""
    out = benchmark("smtp_throughput.py", "--quick", "--databases", "sqlite", "--workers", "0")
    row = re.search(
        rf"^SQLite, workers=0 +{' +'.join([NUMBER] * 7)} +(all met|missed: [a-z0-9, ]+)$",
        out,
        re.MULTILINE,
    )
    assert row is not None, out
    figures = [float(x) for x in row.groups()[:7]]
    assert all(figure > 0 for figure in figures), out
    p50, p99, _ = figures[4:]
    assert p50 <= p99, out
    mail_out = re.search(r"mail out: (.*)$", out, re.MULTILINE)
    assert mail_out is not None, out
    assert "validation-requested 80" in mail_out.group(1), out
    assert "request-done 120" in mail_out.group(1), out
    assert "error" not in mail_out.group(1), out
    cpu = re.search(rf"CPU per reply: mailbot {NUMBER} ms; 0.3x the sink takes {NUMBER} cores", out)
    assert cpu is not None, out
    assert float(cpu.group(1)) > 0, out
    assert re.search(r"^machine: \d+ CPUs, load average ", out, re.MULTILINE), out


def test_the_throughput_benchmark_counts_the_cpu_of_workers_and_postgresql(
    postgres_server: str,
) -> None:
    """On PostgreSQL with a worker process, the CPU per reply is measured in
    serve's processes and in the server's, whose postmaster is found from a
    connection's backend."""
    out = benchmark(
        "smtp_throughput.py",
        *("--quick", "--databases", "postgresql", "--workers", "1", "--instances", "1"),
        *("--postgres", f"{postgres_server}/postgres"),
    )
    cpu = re.search(rf"CPU per reply: mailbot {NUMBER} ms, PostgreSQL {NUMBER} ms; ", out)
    assert cpu is not None, out
    assert float(cpu.group(1)) > 0, out
    assert float(cpu.group(2)) > 0, out


def test_the_throughput_benchmark_measures_intake_alone_on_request() -> None:
    """``--intake-only`` (here with a worker process) prints the intake ratio,
    the median of its rounds, dashes for what it did not measure, and judges
    intake alone."""
    out = benchmark(
        "smtp_throughput.py", "--quick", "--intake-only", "--databases", "sqlite", "--workers", "1"
    )
    row = re.search(
        rf"^SQLite, workers=1 +{NUMBER} +{NUMBER}(?: +-){{5}} +(all met|missed: intake)$",
        out,
        re.MULTILINE,
    )
    assert row is not None, out
    assert float(row.group(1)) > 0, out
    assert float(row.group(2)) > 0, out
    rounds = re.search(r"^    intake rounds: (.*)$", out, re.MULTILINE)
    assert rounds is not None, out
    ratios = sorted(float(r) for r in re.findall(rf"{NUMBER} \(sink \d+/s\)", rounds.group(1)))
    assert len(ratios) == 3, out
    assert f"{ratios[1]:.3f}" == row.group(2), out
    assert "mail out:" not in out, out


def test_the_sender_kills_benchmark_counts_every_mail() -> None:
    """Three killed sweeps (each kill comes within 60 mails, so 200 queued mails
    outlast them) and a last one to the end send every queued mail: the row
    shows the three kills, as many mails sent as were queued, none unsent,
    every mail sent delivered but those lost, and lost per kill."""
    out = benchmark(
        "sender_kills.py",
        *("--mails", "200", "--kills", "3", "--conditions", "idle", "--no-postgres"),
    )
    assert re.search(r"^200 queued mails, 3 kills per cell, .* load average ", out, re.MULTILINE)
    counts = " +".join([r"(\d+)"] * 6)
    row = re.search(rf"^SQLite +idle +{counts} +{NUMBER} +{NUMBER}$", out, re.MULTILINE)
    assert row is not None, out
    kills, sent, delivered, lost, doubled, unsent = (int(x) for x in row.groups()[:6])
    assert kills == 3, out
    assert sent == 200, out
    assert unsent == 0, out
    assert delivered == sent - lost, out
    assert doubled <= delivered, out
    assert abs(float(row.group(7)) - lost / kills) < 1e-4, out
    assert re.search(r"^machine: \d+ CPUs, load average ", out, re.MULTILINE), out


def test_the_acting_benchmark_acts_on_every_reply() -> None:
    """Ten requests ask twenty validations: a row of twenty replies acted on,
    with the CPU and the statements each took."""
    out = benchmark("acting_cpu.py", "--requests", "10", "--no-postgres")
    row = re.search(rf"^SQLite +(\d+) +{NUMBER} +{NUMBER}$", out, re.MULTILINE)
    assert row is not None, out
    assert int(row.group(1)) == 20, out
    assert float(row.group(2)) > 0, out
    assert float(row.group(3)) >= 5, out  # at least: claim, token, lock, write, mark done
    assert re.search(r"^machine: \d+ CPUs, load average ", out, re.MULTILINE), out


def benchmark(script: str, *args: str) -> str:
    """What a benchmark printed, once it ran to its end without a traceback and
    measured every row."""
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    out = run.stdout
    assert run.returncode == 0, run.stderr + out
    assert "Traceback" not in run.stderr, run.stderr
    assert "not measured" not in out, out
    return out
