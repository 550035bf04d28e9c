"""The provider adapters against the local sinks: what they send, and how they sort refusals."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.sinks import SmtpCatcher, TwilioSink
from deploy.sinks.__main__ import main as sinks_main
from services.notifications.adapters.smtp import SmtpPool
from services.notifications.adapters.twilio_sms import TwilioSms
from services.notifications.domain.retries import PermanentFailure, ProviderMisconfigured, TransientFailure

pytestmark = pytest.mark.integration

SID = "AC" + "1" * 32
MESSAGE = b"From: a@leaseline.example\r\nTo: b@example.fr\r\nSubject: hi\r\n\r\nbody\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_smtp_pool_reuses_a_few_connections_for_many_messages(tmp_path: Path) -> None:
    async with SmtpCatcher(tmp_path, port=0) as catcher:
        pool = SmtpPool("127.0.0.1", catcher.port, size=3)
        await asyncio.gather(*(pool.send("a@leaseline.example", f"b{i}@example.fr", MESSAGE) for i in range(30)))
        await pool.close()
    assert catcher.received == 30
    assert pool.connections_opened == 3
    assert len(list(tmp_path.glob("*.eml"))) == 30


async def test_the_smtp_pool_reconnects_after_the_server_went_away(tmp_path: Path) -> None:
    catcher = await SmtpCatcher(tmp_path, port=0).start()
    pool = SmtpPool("127.0.0.1", catcher.port, size=1)
    await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
    await catcher.stop()
    with pytest.raises(TransientFailure, match="SMTP connection"):
        await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
    catcher = await SmtpCatcher(tmp_path, port=catcher.port).start()
    try:
        await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
    finally:
        await pool.close()
        await catcher.stop()
    assert catcher.received == 1 and pool.connections_opened == 2


async def test_smtp_replies_are_sorted_into_retry_later_and_give_up(tmp_path: Path) -> None:
    async with SmtpCatcher(None, port=0) as catcher:
        pool = SmtpPool("127.0.0.1", catcher.port, size=1)
        catcher.fail(451, "Greylisted, try later")
        with pytest.raises(TransientFailure, match="451"):
            await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
        catcher.fail(550, "No such mailbox")
        with pytest.raises(PermanentFailure, match="550"):
            await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
        await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)  # the connection survived both
        await pool.close()
    assert catcher.received == 1 and pool.connections_opened == 1
    nobody = SmtpPool("127.0.0.1", free_port(), size=1, timeout_s=2)
    with pytest.raises(TransientFailure):
        await nobody.send("a@leaseline.example", "b@example.fr", MESSAGE)


async def test_the_catcher_can_refuse_one_recipient_while_it_accepts_the_others(tmp_path: Path) -> None:
    async with SmtpCatcher(None, port=0) as catcher:
        pool = SmtpPool("127.0.0.1", catcher.port, size=1)
        catcher.refuse_recipient("Busy@example.fr", 451, "4.2.1 Mailbox busy", times=2)
        catcher.refuse_recipient("gone@example.fr", 550, "5.1.1 User unknown")
        for _ in range(2):
            with pytest.raises(TransientFailure, match="451 4.2.1 Mailbox busy"):
                await pool.send("a@leaseline.example", "busy@example.fr", MESSAGE)
            await pool.send("a@leaseline.example", "other@example.fr", MESSAGE)
        with pytest.raises(PermanentFailure, match="550 5.1.1 User unknown"):
            await pool.send("a@leaseline.example", "gone@example.fr", MESSAGE)
        await pool.send("a@leaseline.example", "busy@example.fr", MESSAGE)  # its refusals are used up
        await pool.send("a@leaseline.example", "gone@example.fr", MESSAGE)
        await pool.close()
    assert [m.rcpt_tos for m in catcher.messages] == [("other@example.fr",)] * 2 + [("busy@example.fr",), ("gone@example.fr",)]
    assert catcher.refused == [("busy@example.fr", "451 4.2.1 Mailbox busy"), ("busy@example.fr", "451 4.2.1 Mailbox busy"),
                               ("gone@example.fr", "550 5.1.1 User unknown")]
    assert pool.connections_opened == 1, "a refused recipient does not cost the connection"


async def test_an_smtp_server_refusing_our_credentials_is_retried_and_never_blamed_on_the_recipient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    def refuse(server: object, session: object, envelope: object, mechanism: str, auth_data: object) -> AuthResult:
        return AuthResult(success=False, handled=False)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), authenticator=refuse, auth_required=True, auth_require_tls=False, loop=loop),
        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = SmtpPool("127.0.0.1", port, size=1, username="leaseline", password="rotated-yesterday")
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(TransientFailure, match="535"):
            await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
        assert any(getattr(r, "alert", None) == "operator" for r in caplog.records), "an operator is told"
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_an_smtp_server_refusing_our_sender_or_asking_for_a_login_is_our_setup_not_the_recipient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_MAIL(self, server: SMTP, session: object, envelope: Any, address: str, options: list[str]) -> str:
            if address != "a@leaseline.example":
                return "553 5.7.1 Sender address rejected: not owned by user"
            envelope.mail_from = address
            return "250 OK"

        async def handle_RCPT(self, server: SMTP, session: object, envelope: Any, address: str, options: list[str]) -> str:
            if address == "nobody@example.fr":
                return "550 5.1.1 Recipient address rejected: User unknown"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
            return "250 OK"

    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: SMTP(Handler(), loop=loop), "127.0.0.1", 0),
               await loop.create_server(lambda: SMTP(Handler(), auth_required=True, auth_require_tls=False, loop=loop),
                                        "127.0.0.1", 0)]
    open_port, login_port = (server.sockets[0].getsockname()[1] for server in servers)
    pool, unauthenticated = SmtpPool("127.0.0.1", open_port, size=1), SmtpPool("127.0.0.1", login_port, size=1)
    try:
        with caplog.at_level(logging.ERROR):
            with pytest.raises(ProviderMisconfigured, match="553 5.7.1 Sender address rejected") as refused:
                await pool.send("someone-else@leaseline.example", "b@example.fr", MESSAGE)
            with pytest.raises(ProviderMisconfigured, match="530") as login_required:
                await unauthenticated.send("a@leaseline.example", "b@example.fr", MESSAGE)
        with pytest.raises(PermanentFailure, match="550 5.1.1"):
            await pool.send("a@leaseline.example", "nobody@example.fr", MESSAGE)
        await pool.send("a@leaseline.example", "b@example.fr", MESSAGE)
    finally:
        await pool.close()
        await unauthenticated.close()
        for server in servers:
            server.close()
            await server.wait_closed()
    assert refused.value.code == "553" and login_required.value.code == "530"
    assert "not the recipient" in refused.value.reason
    alerts = [r for r in caplog.records if getattr(r, "alert", None) == "operator"]
    assert [r.code for r in alerts] == ["553", "530"]  # type: ignore[attr-defined]


async def test_the_official_twilio_client_sends_through_the_sink(tmp_path: Path) -> None:
    async with TwilioSink(tmp_path, auth_token="secret") as sink:
        sms = TwilioSms(account_sid=SID, auth_token="secret", from_number="+15005550006", base_url=sink.base_url)
        await sms.start()
        sid = await sms.send("+33612345678", "Leaseline : votre code est 123456.")
        await sms.close()
    assert sid.startswith("SM") and len(sid) == 34
    [stored] = sink.messages
    assert (stored.to, stored.from_, stored.body, stored.sid) == ("+33612345678", "+15005550006",
                                                                  "Leaseline : votre code est 123456.", sid)
    row = json.loads((tmp_path / "messages.jsonl").read_text())
    assert row["sid"] == sid and row["from"] == "+15005550006"


async def test_many_sms_travel_over_the_one_http_session_of_the_twilio_client() -> None:
    async with TwilioSink() as sink:
        sms = TwilioSms(account_sid=SID, auth_token="t", from_number="+15005550006", base_url=sink.base_url)
        await sms.start()
        for i in range(5):
            await sms.send(f"+3361234567{i}", "Leaseline : votre code est 123456.")
        assert sink.connections == 1, "five in a row over one keep-alive connection"
        await asyncio.gather(*(sms.send(f"+3369876543{i}", "Leaseline : votre code est 654321.") for i in range(3)))
        await sms.close()
    assert len(sink.messages) == 8
    assert sink.connections <= 3, "then at most one per request in flight"


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(400, 21211, PermanentFailure), (400, 21610, PermanentFailure), (429, 20429, TransientFailure),
     (500, 20500, TransientFailure), (503, 30001, TransientFailure)],
)
async def test_twilio_errors_are_sorted_by_status_and_code(status: int, code: int, kind: type) -> None:
    async with TwilioSink() as sink:
        sink.fail(status=status, code=code)
        sms = TwilioSms(account_sid=SID, auth_token="t", from_number="+15005550006", base_url=sink.base_url)
        with pytest.raises(kind) as raised:
            await sms.send("+33612345678", "hello")
        assert raised.value.code == str(code)
        assert await sms.send("+33612345678", "hello")  # the next request goes through
        await sms.close()


async def test_twilio_refusing_our_credentials_is_a_retry_and_an_operator_alert_not_the_recipients_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with TwilioSink(auth_token="the-real-token") as sink:
        sms = TwilioSms(account_sid=SID, auth_token="a-stale-token", from_number="+15005550006", base_url=sink.base_url)
        with caplog.at_level(logging.ERROR, logger="services.notifications.adapters.twilio_sms"):
            with pytest.raises(TransientFailure) as raised:
                await sms.send("+33612345678", "hello")
        await sms.close()
    assert isinstance(raised.value, ProviderMisconfigured) and not isinstance(raised.value, PermanentFailure)
    assert raised.value.code == "20003" and "not the recipient" in raised.value.reason
    [alert] = [r for r in caplog.records if getattr(r, "alert", None) == "operator"]
    assert alert.levelno == logging.ERROR and alert.code == 20003  # type: ignore[attr-defined]
    assert sink.messages == []


@pytest.mark.parametrize(("status", "code"), [(400, 21212), (400, 21606), (400, 21408), (403, 20008), (404, 20404)])
async def test_twilio_refusals_of_our_sender_or_account_are_retried(status: int, code: int) -> None:
    async with TwilioSink() as sink:
        sink.fail(status=status, code=code)
        sms = TwilioSms(account_sid=SID, auth_token="t", from_number="+15005550006", base_url=sink.base_url)
        with pytest.raises(ProviderMisconfigured) as raised:
            await sms.send("+33612345678", "hello")
        await sms.close()
    assert raised.value.code == str(code)


async def test_twilio_unreachable_or_too_slow_is_worth_a_retry() -> None:
    unreachable = TwilioSms(account_sid=SID, auth_token="t", from_number="+1500", base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientFailure, match="unreachable"):
        await unreachable.send("+33612345678", "hello")
    await unreachable.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = TwilioSms(account_sid=SID, auth_token="t", from_number="+1500", base_url=f"http://127.0.0.1:{port}",
                     timeout_s=0.5)
    try:
        with pytest.raises(TransientFailure):
            await slow.send("+33612345678", "hello")
    finally:
        await slow.close()
        server.close()


async def test_the_twilio_sink_speaks_twilios_error_format_and_can_be_told_to_fail() -> None:
    async with TwilioSink(auth_token="secret") as sink, httpx.AsyncClient(base_url=sink.base_url) as http:
        url = f"/2010-04-01/Accounts/{SID}/Messages.json"
        anonymous = await http.post(url, data={"To": "+33612345678", "From": "+1500", "Body": "x"})
        assert anonymous.status_code == 401 and anonymous.json()["code"] == 20003
        bad = await http.post(url, data={"To": "0612", "From": "+1500", "Body": "x"}, auth=(SID, "secret"))
        assert bad.status_code == 400
        assert bad.json() == {"code": 21211, "message": "The 'To' number 0612 is not a valid phone number.",
                              "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
        control = await http.post("/_control/fail", json={"status": 400, "code": 21610, "times": 1})
        assert control.json() == {"pending_failures": 1}
        refused = await http.post(url, data={"To": "+33612345678", "From": "+1500", "Body": "x"}, auth=(SID, "secret"))
        assert refused.json()["code"] == 21610
        created = await http.post(url, data={"To": "+33612345678", "From": "+1500", "Body": "x"}, auth=(SID, "secret"))
        assert created.status_code == 201 and created.json()["status"] == "queued"
        fetched = await http.get(f"/2010-04-01/Accounts/{SID}/Messages/{created.json()['sid']}.json", auth=(SID, "secret"))
        assert fetched.json()["sid"] == created.json()["sid"]


async def test_the_inbox_lists_what_the_sinks_received_newest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with SmtpCatcher(tmp_path / "mail", port=0) as catcher, TwilioSink(tmp_path / "sms") as sink:
        pool = SmtpPool("127.0.0.1", catcher.port, size=1)
        await pool.send("a@leaseline.example", "b@example.fr",
                        b"From: a@leaseline.example\r\nTo: b@example.fr\r\nSubject: Activez votre compte\r\n\r\n"
                        b"https://portal.leaseline.example/activate?token=abc\r\n")
        await pool.close()
        await asyncio.sleep(0.01)
        sms = TwilioSms(account_sid=SID, auth_token="t", from_number="+1500", base_url=sink.base_url)
        await sms.send("+33612345678", "Leaseline : votre code est 123456.")
        await sms.close()
    assert sinks_main(["--dir", str(tmp_path), "inbox"]) == 0
    out = capsys.readouterr().out
    assert out.index("+33612345678") < out.index("b@example.fr"), "newest first"
    assert "Activez votre compte" in out and "https://portal.leaseline.example/activate?token=abc" in out
