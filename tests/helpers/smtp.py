"""A real SMTP server for tests: aiosmtpd on a free loopback port, in its own thread, keeping
every message it accepts.

    smtp_server.port                       # point smtp_port here (smtp_host 127.0.0.1)
    msg = await smtp_server.wait_for_mail("ana@example.org")   # the parsed EmailMessage
    link = verification_link(msg)          # https://.../verify-email?token=...

Waiting is event-based (a threading.Condition the server's thread notifies), never a poll.
`stop()` takes the server down (connections are refused) and `start()` brings it back on the
same port, for the tests of a mail server that is away.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.helpers.services import free_port

HOST = "127.0.0.1"
LINK = re.compile(r"https?://\S+/verify-email\?token=\S+")


class _Collector:
    """aiosmtpd handler: parse and keep each message, wake the waiters."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.server.arrived:
            for rcpt in envelope.rcpt_tos:
                self.server.messages.append((rcpt.lower(), message))
            self.server.arrived.notify_all()
        return "250 Message accepted for delivery"


class SmtpServer:
    """The server, its port, and every (recipient, message) it accepted, oldest first."""

    def __init__(self, port: int | None = None, *, logins: dict[str, str] | None = None) -> None:
        """With `logins` (name -> password) the server takes mail only after AUTH (over the
        plain connection: a loopback test has no certificate to offer)."""
        self.port = port or free_port()
        self.logins = logins
        self.messages: list[tuple[str, EmailMessage]] = []
        self.arrived = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> None:
        auth: dict[str, Any] = {}
        if self.logins is not None:
            auth = {
                "auth_required": True,
                "auth_require_tls": False,
                "authenticator": self._authenticate,
            }
        self._controller = Controller(_Collector(self), hostname=HOST, port=self.port, **auth)
        self._controller.start()

    def _authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        assert self.logins is not None
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        return AuthResult(success=self.logins.get(login) == password, handled=False)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def mails_to(self, to: str) -> list[EmailMessage]:
        with self.arrived:
            return [m for rcpt, m in self.messages if rcpt == to.lower()]

    def wait_for_mail_blocking(
        self, to: str, timeout: float = 10.0, count: int = 1
    ) -> EmailMessage:
        """The `count`-th mail to `to` (the first by default), once it has arrived;
        AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                got = [m for rcpt, m in self.messages if rcpt == to.lower()]
                if len(got) >= count:
                    return got[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no mail #{count} to {to} within {timeout} s")
                self.arrived.wait(left)

    async def wait_for_mail(
        self,
        to: str,
        timeout: float = 10.0,  # noqa: ASYNC109 - the wait runs in a thread, bounded by it
        count: int = 1,
    ) -> EmailMessage:
        """`wait_for_mail_blocking` without blocking the event loop (the app under test may be
        running in it)."""
        return await asyncio.to_thread(self.wait_for_mail_blocking, to, timeout, count)

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def mail_text(message: EmailMessage) -> str:
    """The plain-text body, with the wire's CRLF line ends as \n."""
    body = message.get_body(preferencelist=("plain",))
    assert body is not None, "the mail has no text/plain part"
    return str(body.get_content()).replace("\r\n", "\n")


def verification_link(message: EmailMessage) -> str:
    """The verification link in a registration mail."""
    found = LINK.search(mail_text(message))
    assert found is not None, f"no verification link in: {mail_text(message)!r}"
    return found.group(0)


def verification_token(message: EmailMessage) -> str:
    """The token of the verification link (URL-decoded)."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(verification_link(message)).query)["token"][0]
