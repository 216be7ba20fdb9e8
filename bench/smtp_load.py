"""SMTP load generator, run as a child process so the server under test owns its process:
``python -m bench.smtp_load PORT CONNECTIONS MESSAGES_PER_CONNECTION SEQ_BASE``.

Opens every connection (greeting + EHLO) first, then times only the mail transactions: from
the first MAIL on any connection to the last DATA reply on all of them. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.smtp_client import SmtpConnection, SmtpReplyError, message


async def _load(port: int, conns: int, per_conn: int, seq_base: int, limit_s: float) -> None:
    connections = [await SmtpConnection.open(port) for _ in range(conns)]
    ok = 0
    failed: dict[str, int] = {}

    async def one(index: int, conn: SmtpConnection) -> None:
        nonlocal ok
        for k in range(per_conn):
            rcpt, data = message(seq_base + index * per_conn + k)
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
    asyncio.run(_load(port, conns, per_conn, seq_base, limit_s=120.0))


if __name__ == "__main__":
    main()
