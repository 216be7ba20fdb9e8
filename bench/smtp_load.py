"""SMTP load generator, run as a child process so the server under test owns its process:
``python -m bench.smtp_load PORT CONNECTIONS MESSAGES_PER_CONNECTION SEQ_BASE [interleaved]``.

Message numbers (which select the recipient, bench.smtp_client.message) go in blocks by
default, connection c sending SEQ_BASE + c * MESSAGES_PER_CONNECTION onwards; `interleaved`
deals them out in turn instead (message i on connection i % CONNECTIONS), the order of a
shared queue that several senders take from, as Kannel's injection in benchmark 8 does: with
blocks of a multiple of 100 every connection texts the same patron at the same moment.

Opens every connection (greeting + EHLO) first, then times only the mail transactions: from
the first MAIL on any connection to the last DATA reply on all of them. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.smtp_client import SmtpConnection, SmtpReplyError, message


async def _load(
    port: int, conns: int, per_conn: int, seq_base: int, limit_s: float, interleaved: bool
) -> None:
    connections = [await SmtpConnection.open(port) for _ in range(conns)]
    ok = 0
    failed: dict[str, int] = {}

    async def one(index: int, conn: SmtpConnection) -> None:
        nonlocal ok
        for k in range(per_conn):
            seq = k * conns + index if interleaved else index * per_conn + k
            rcpt, data = message(seq_base + seq)
            try:
                await conn.send(rcpt, data)
                ok += 1
            except SmtpReplyError as exc:
                failed[str(exc.code)] = failed.get(str(exc.code), 0) + 1

    start = time.monotonic()
    cpu = time.process_time()
    async with asyncio.timeout(limit_s):
        await asyncio.gather(*(one(i, c) for i, c in enumerate(connections)))
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu
    for conn in connections:
        await conn.close()
    result = {"ok": ok, "failed": failed, "elapsed_s": elapsed, "client_cpu_s": cpu}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def main() -> None:
    port, conns, per_conn, seq_base = (int(a) for a in sys.argv[1:5])
    interleaved = sys.argv[5:6] == ["interleaved"]
    asyncio.run(_load(port, conns, per_conn, seq_base, limit_s=120.0, interleaved=interleaved))


if __name__ == "__main__":
    main()
