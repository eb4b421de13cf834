"""The SMTP adapter of the mail port against a real SMTP server (aiosmtpd): a plain-text mail
with its headers arrives; a server that wants a login gets it, and a wrong password, a server
that is down or a header with a line break are a MailError with the reason, never a crash."""

from __future__ import annotations

import pytest

from cloud.services.mailer import MailError, OutboxMailer, SmtpMailer
from tests.helpers.smtp import SmtpServer, mail_text

# The test server asks for a login over plain TCP on loopback; aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

FROM = "gridmint <no-reply@gridmint.test>"


async def test_a_mail_arrives_with_its_headers(smtp_server: SmtpServer) -> None:
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, FROM, timeout_s=5)
    await mailer.send("ana@example.org", "Hello", "line one\nline two — ünïcode\n")
    mail = await smtp_server.wait_for_mail("ana@example.org")
    assert (mail["From"], mail["To"], mail["Subject"]) == (FROM, "ana@example.org", "Hello")
    assert mail["Date"] and mail["Message-ID"].endswith("@gridmint.test>")
    assert mail_text(mail) == "line one\nline two — ünïcode\n"


async def test_login_and_the_ways_a_mail_fails() -> None:
    with SmtpServer(logins={"relay": "s3cret-pass"}) as server:
        good = SmtpMailer(
            "127.0.0.1", server.port, FROM, username="relay", password="s3cret-pass", timeout_s=5
        )
        await good.send("bo@example.org", "Hi", "text")
        assert (await server.wait_for_mail("bo@example.org"))["Subject"] == "Hi"

        wrong = SmtpMailer(
            "127.0.0.1", server.port, FROM, username="relay", password="nope", timeout_s=5
        )
        with pytest.raises(MailError, match=f"127.0.0.1:{server.port} did not take the mail"):
            await wrong.send("bo@example.org", "Hi", "text")
        anonymous = SmtpMailer("127.0.0.1", server.port, FROM, timeout_s=5)
        with pytest.raises(MailError, match="did not take the mail"):
            await anonymous.send("bo@example.org", "Hi", "text")
        with pytest.raises(MailError, match="cannot be written"):
            await good.send("bo@example.org", "Hi\r\nBcc: many@example.org", "text")
        assert len(server.mails_to("bo@example.org")) == 1
        port = server.port
    with pytest.raises(MailError, match="did not take the mail"):  # nobody listens any more
        await SmtpMailer("127.0.0.1", port, FROM, timeout_s=5).send("bo@example.org", "Hi", "x")


async def test_the_outbox_keeps_mails() -> None:
    told: list[str] = []
    outbox = OutboxMailer(limit=2, on_send=lambda m: told.append(m.to))
    for to in ("a@x.org", "b@x.org", "c@x.org"):
        await outbox.send(to, "s", f"for {to}")
    assert [m.to for m in outbox.sent] == ["b@x.org", "c@x.org"] and told == [
        "a@x.org",
        "b@x.org",
        "c@x.org",
    ]
    assert outbox.last_to("c@x.org") is not None and outbox.last_to("a@x.org") is None
