"""How fast mailbot's SMTP listener acknowledges mail, beside a bare aiosmtpd sink.

Both servers run as separate processes on loopback and receive the same load
from an asyncio client here (N connections, each sending its share of the
messages one after another). mailbot answers 250 only once the raw bytes are
durably committed (SQLite, WAL, synchronous=FULL, shared commits), then
parses and acts after the answer; the sink discards. The ratio is the figure
to read: the machine's noise affects both runs alike.

    python benchmarks/smtp_throughput.py [--messages 3000] [--connections 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = (
    "Subject: Hello\r\nFrom: someone@client.test\r\nTo: changes@mailbot.localhost\r\n"
    "Message-ID: <{n}.{run}@client.test>\r\n\r\n"
    + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    * 17
)


_held: list[socket.socket] = []


def free_port() -> int:
    """A loopback port held until the benchmark ends: bound with SO_REUSEADDR but
    not listening, so that no other program is handed it, while the server
    started here (which binds with SO_REUSEADDR too) takes it over."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _held.append(sock)
    return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")
        if line[3:4] != b"-":
            return


async def session(port: int, numbers: range, run: str, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, b"220")
    writer.write(b"EHLO bench.test\r\n")
    await expect(reader, b"250")
    for n in numbers:
        started = time.perf_counter()
        writer.write(b"MAIL FROM:<someone@client.test>\r\nRCPT TO:<changes@mailbot.localhost>\r\n")
        await expect(reader, b"250")
        await expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await expect(reader, b"354")
        writer.write(BODY.format(n=n, run=run).encode() + b".\r\n")
        await expect(reader, b"250")
        latencies.append(time.perf_counter() - started)
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


async def load(port: int, messages: int, connections: int, run: str) -> tuple[float, list[float]]:
    latencies: list[float] = []
    share = messages // connections
    started = time.perf_counter()
    await asyncio.gather(
        *(
            session(port, range(i * share, (i + 1) * share), run, latencies)
            for i in range(connections)
        )
    )
    return time.perf_counter() - started, latencies


def start(command: list[str], cwd: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_listening(port)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def measure(
    name: str, process: subprocess.Popen[bytes], port: int, args: argparse.Namespace
) -> float:
    try:
        asyncio.run(load(port, 50, 1, f"{name}-warm"))
        elapsed, latencies = asyncio.run(load(port, args.messages, args.connections, name))
    finally:
        stop(process)
    rate = len(latencies) / elapsed
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{name:<28} {rate:8.0f} msg/s   median {statistics.median(latencies) * 1000:6.2f} ms"
        f"   p99 {p99 * 1000:6.2f} ms"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.messages} messages of {len(BODY)} bytes over {args.connections} connections\n")
    with tempfile.TemporaryDirectory(prefix="mailbot-bench-") as folder:
        root = Path(folder)
        sink_port, smtp_port, web_port = free_port(), free_port(), free_port()
        sink = start(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Sink",
                "-l",
                f"127.0.0.1:{sink_port}",
            ],
            root,
            sink_port,
        )
        bare = measure("bare aiosmtpd sink", sink, sink_port, args)
        (root / "mailbot.toml").write_text(
            f"[smtp]\nport = {smtp_port}\n[web]\nport = {web_port}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBOT_")}
        subprocess.run(
            [sys.executable, "-m", "mailbot", "init"],
            cwd=root,
            check=True,
            capture_output=True,
            env=env,
        )
        served = start([sys.executable, "-m", "mailbot", "serve"], root, smtp_port)
        ours = measure("mailbot serve (SQLite)", served, smtp_port, args)
    print(f"\nmailbot acknowledges at {ours / bare:.0%} of the bare sink's rate")


if __name__ == "__main__":
    main()
