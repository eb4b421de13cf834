"""Sending email behind a port: registration (and whatever mails next) asks a `Mailer` to send
a plain-text message; which one sends it is configuration.

Owns: the mail port and its two adapters. `SmtpMailer` hands the message to an SMTP server
(stdlib smtplib in a worker thread, so the event loop never waits on the network; STARTTLS and
login when configured). `OutboxMailer` keeps sent mails in memory: the embedded demo has no
mail server, and prints the links instead.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

__all__ = ["MailError", "Mailer", "OutboxMailer", "SentMail", "SmtpMailer"]

log = logging.getLogger(__name__)


class MailError(Exception):
    """The mail could not be handed to the mail server; the message says why."""


class Mailer(Protocol):
    """Sends one plain-text mail; MailError when it could not be handed over."""

    async def send(self, to: str, subject: str, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SentMail:
    """A mail the outbox kept."""

    to: str
    subject: str
    text: str


@dataclass
class OutboxMailer:
    """Keeps every mail in memory (newest last) instead of sending it."""

    sent: list[SentMail] = field(default_factory=list)
    limit: int = 1000  # a long-running demo forgets the oldest
    # Told of each mail as it is kept (the demo prints it, links and all).
    on_send: Callable[[SentMail], None] | None = None

    async def send(self, to: str, subject: str, text: str) -> None:
        mail = SentMail(to, subject, text)
        self.sent.append(mail)
        del self.sent[: -self.limit]
        if self.on_send is not None:
            self.on_send(mail)
        log.info("mail to %s kept in the outbox (no SMTP server configured): %s", to, subject)

    def last_to(self, to: str) -> SentMail | None:
        """The newest mail to `to`, if any."""
        return next((m for m in reversed(self.sent) if m.to == to), None)


class SmtpMailer:
    """Hands mails to an SMTP server (a relay or a provider's submission port)."""

    def __init__(
        self,
        host: str,
        port: int,
        from_address: str,
        *,
        starttls: bool = False,
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.from_address = from_address
        self.starttls = starttls
        self.username = username
        self.password = password
        self.timeout_s = timeout_s

    def _message(self, to: str, subject: str, text: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.from_address
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.from_address.rpartition("@")[2] or None)
        message.set_content(text)
        return message

    def _send_blocking(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(message)

    async def send(self, to: str, subject: str, text: str) -> None:
        try:
            message = self._message(to, subject, text)
        except ValueError as exc:  # a header that cannot be written (a line break in it)
            raise MailError(f"the mail to {to!r} cannot be written: {exc}") from exc
        try:
            await asyncio.to_thread(self._send_blocking, message)
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timed out
            raise MailError(
                f"the mail server {self.host}:{self.port} did not take the mail: {exc}"
            ) from exc
