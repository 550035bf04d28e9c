"""``python -m deploy.sinks smtp|twilio|inbox``: run a local sink, or list what they received."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from deploy.sinks import inbox as inbox_module
from deploy.sinks import smtp, twilio
from deploy.sinks.paths import mail_dir, sinks_dir, sms_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.sinks", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="where the sinks keep messages (default: $SINKS_DIR or .local/sinks)")
    sub = parser.add_subparsers(dest="command", required=True)
    catcher = sub.add_parser("smtp", help="an SMTP server that keeps every message as an .eml file")
    catcher.add_argument("--host", default="127.0.0.1")
    catcher.add_argument("--port", type=int, default=int(os.environ.get("SMTP_PORT", "1025")))
    sink = sub.add_parser("twilio", help="a Twilio-compatible Messages API that keeps every SMS")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=int(os.environ.get("TWILIO_SINK_PORT", "8025")))
    sink.add_argument("--auth-token", default=os.environ.get("TWILIO_SINK_AUTH_TOKEN"), help="refuse other tokens")
    box = sub.add_parser("inbox", help="what was delivered, newest first")
    box.add_argument("-n", "--limit", type=int, default=20)
    box.add_argument("--full", action="store_true", help="print whole bodies")
    args = parser.parse_args(argv)
    root = args.dir.resolve() if args.dir else sinks_dir()

    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "smtp":
            asyncio.run(smtp.serve(mail_dir(root), args.host, args.port))
        elif args.command == "twilio":
            asyncio.run(twilio.serve(sms_dir(root), args.host, args.port, args.auth_token))
        else:
            print(inbox_module.render(inbox_module.inbox(root, args.limit), full=args.full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
