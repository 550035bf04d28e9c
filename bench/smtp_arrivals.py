"""The benchmark's SMTP server, in a process of its own (as a real mail server would be): accepts
every message and appends ``<notification id> <unix time>`` per message to a file.

    python -m bench.smtp_arrivals ARRIVALS_FILE     # prints the port it listens on, then serves
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from deploy.sinks import CaughtMail, SmtpCatcher

HEADER = b"X-Leaseline-Notification: "


async def serve(arrivals: Path) -> None:
    out = arrivals.open("a", buffering=1 << 16)

    def arrived(mail: CaughtMail) -> None:
        start = mail.data.find(HEADER)
        if start >= 0:
            end = mail.data.find(b"\r\n", start)
            out.write(f"{mail.data[start + len(HEADER) : end].decode()} {mail.received_at!r}\n")

    async def flush_often() -> None:
        while True:
            await asyncio.sleep(0.05)
            out.flush()

    catcher = await SmtpCatcher(None, port=0, keep=False, on_message=arrived).start()
    print(catcher.port, flush=True)
    await flush_often()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
