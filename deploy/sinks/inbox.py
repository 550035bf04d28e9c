"""What the local sinks received, newest first: ``python -m deploy.sinks inbox``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

from deploy.sinks.paths import mail_dir, sms_dir
from deploy.sinks.twilio import MESSAGES_FILE

_URL = re.compile(r"https?://\S+")


@dataclass(frozen=True)
class Item:
    received_at: float
    channel: str
    to: str
    title: str
    body: str
    source: str

    @property
    def links(self) -> list[str]:
        return _URL.findall(self.body)


def read_mail(directory: Path) -> list[Item]:
    items = []
    for path in directory.glob("*.eml") if directory.exists() else []:
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        part = message.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""
        received = int(path.name.split("-", 1)[0]) / 1e9 if path.name.split("-", 1)[0].isdigit() else path.stat().st_mtime
        items.append(Item(received, "email", str(message["To"]), str(message["Subject"]), body, str(path)))
    return items


def read_sms(directory: Path) -> list[Item]:
    file = directory / MESSAGES_FILE
    if not file.exists():
        return []
    items = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(Item(row["received_at"], "sms", row["to"], row["body"][:60], row["body"], row["sid"]))
    return items


def inbox(root: Path | None = None, limit: int = 20) -> list[Item]:
    items = read_mail(mail_dir(root)) + read_sms(sms_dir(root))
    return sorted(items, key=lambda item: item.received_at, reverse=True)[:limit]


def render(items: list[Item], full: bool = False) -> str:
    if not items:
        return "Nothing received yet."
    lines = []
    for item in items:
        when = datetime.fromtimestamp(item.received_at).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{when}  {item.channel:<5}  {item.to}")
        lines.append(f"    {item.title}")
        if full:
            lines += ["    " + line for line in item.body.splitlines()]
        else:
            lines += [f"    -> {link}" for link in item.links[:2]]
        lines.append("")
    return "\n".join(lines)
