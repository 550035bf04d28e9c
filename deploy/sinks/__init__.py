"""Local stand-ins for the providers notifications talks to, for development and tests.

- ``SmtpCatcher``: an SMTP server (aiosmtpd) that accepts every message and keeps it as an
  ``.eml`` file (and in memory); it can be told to refuse the next messages with a given reply.
- ``TwilioSink``: the part of Twilio's Messages API the official client uses, storing each
  message as a JSON line; it can be told to answer the next requests with a Twilio error.
- ``inbox``: what both received, newest first, readable in a terminal.

In-process (tests): ``await SmtpCatcher(dir).start()`` / ``.stop()``, same for ``TwilioSink``.
As processes: ``python -m deploy.sinks smtp|twilio|inbox --help``.
"""

from deploy.sinks.smtp import CaughtMail, SmtpCatcher
from deploy.sinks.twilio import SentSms, TwilioSink

__all__ = ["CaughtMail", "SentSms", "SmtpCatcher", "TwilioSink"]
