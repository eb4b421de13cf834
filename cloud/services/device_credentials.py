"""Device TLS credentials and the broker's view of the registry.

Owns: issuing a client certificate when a Pi enrolls, revoking a device's certificates when an
approver rejects or revokes it, and keeping the broker's ACL and CRL files in step with the
device registry (then asking the broker to re-read them).

Why the ACL lists pending devices too: a pending device's tokens are verified and held so they
count once it is approved, so it must be able to publish them. Rejected and revoked devices are
left out of the ACL *and* their certificates go on the CRL: the ACL stops a connected client
from publishing, the CRL stops it from connecting at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cloud.broker_config import DEFAULT_AGGREGATOR, render_acl
from cloud.domain.devices import DeviceStatus
from cloud.pki import DeviceCA, PkiError, describe
from cloud.storage.store import Store

log = logging.getLogger(__name__)

DEFAULT_CERT_DAYS = 90
CRL_HOURS = 24.0


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sighup_pid_file(pid_file: Path) -> Callable[[], None]:
    """A reload action that sends SIGHUP to the process named in a pid file (mosquitto's)."""

    def reload() -> None:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read the broker's pid from {pid_file}: {exc}") from None
        os.kill(pid, signal.SIGHUP)

    return reload


class DeviceCredentials:
    """The CA on the aggregator side, wired to the registry and the broker's files."""

    def __init__(
        self,
        store: Store,
        ca: DeviceCA,
        ca_dir: Path,
        *,
        acl_path: Path | None = None,
        crl_path: Path | None = None,
        reload_broker: Callable[[], None] | None = None,
        aggregator_identity: str = DEFAULT_AGGREGATOR,
        cert_valid_days: float = DEFAULT_CERT_DAYS,
        now: Callable[[], float] | None = None,
    ):
        self.store = store
        self.ca = ca
        self.ca_dir = ca_dir
        self.acl_path = acl_path
        self.crl_path = crl_path
        self.reload_broker = reload_broker
        self.aggregator_identity = aggregator_identity
        self.cert_valid_days = cert_valid_days
        self._now = now or (lambda: datetime.now(UTC).timestamp())
        self._lock = asyncio.Lock()
        self.reloads = 0

    def _utcnow(self) -> datetime:
        return datetime.fromtimestamp(self._now(), UTC)

    @property
    def ca_bundle_pem(self) -> bytes:
        """The trust anchor a device needs for the broker's server certificate."""
        return self.ca.cert_pem

    async def issue(self, site_id: str, device_id: str, csr_pem: bytes) -> bytes:
        """A client certificate for an enrolling device; PkiError for a bad request."""
        async with self._lock:
            cert_pem = self.ca.issue_client_cert(
                csr_pem, device_id, site_id, self.cert_valid_days, self._utcnow()
            )
            self.ca.save_state(self.ca_dir)
            info = describe(cert_pem)
            if info.common_name != device_id:
                raise PkiError("the CA issued a certificate for another name")
        await self.sync_broker()
        return cert_pem

    async def renew(
        self,
        device_id: str,
        current_cert_pem: bytes,
        csr_pem: bytes,
        proof: bytes,
        signed_at: datetime,
    ) -> bytes:
        """A renewed certificate for a new TLS key, proven by the current one; else PkiError."""
        async with self._lock:
            try:
                holder = describe(current_cert_pem).common_name
            except ValueError:
                raise PkiError("the current certificate is not a PEM certificate") from None
            if holder != device_id:
                raise PkiError(f"the current certificate is not {device_id!r}'s")
            cert_pem = self.ca.renew(
                current_cert_pem, csr_pem, proof, self._utcnow(), signed_at=signed_at
            )
            self.ca.save_state(self.ca_dir)
        return cert_pem

    async def device_status_changed(self, device_id: str, status: DeviceStatus) -> None:
        """Follow an approver's decision: revoke on reject/revoke, then update the broker."""
        if not status.may_sign:
            async with self._lock:
                now = self._utcnow()
                reason = (
                    "cessationOfOperation" if status is DeviceStatus.REJECTED else "keyCompromise"
                )
                for serial in self.ca.issued_serials(device_id):
                    self.ca.revoke(serial, reason, now)
                self.ca.save_state(self.ca_dir)
        await self.sync_broker()

    async def broker_devices(self) -> list[tuple[str, str]]:
        """(site, device) of every device that may use the broker."""
        return sorted(
            (d.device.site_id, d.device.device_id)
            for d in await self.store.list_devices()
            if d.device.status.may_sign
        )

    async def sync_broker(self) -> None:
        """Rewrite the ACL and CRL from the registry and the CA, then reload the broker."""
        devices = await self.broker_devices()
        async with self._lock:
            if self.acl_path is not None:
                acl = render_acl(self.aggregator_identity, devices)
                _write_atomically(self.acl_path, acl.encode())
            if self.crl_path is not None:
                crl = self.ca.crl_pem(self._utcnow(), next_update_hours=CRL_HOURS)
                self.ca.save_state(self.ca_dir)
                _write_atomically(self.crl_path, crl)
            if self.reload_broker is not None:
                try:
                    self.reload_broker()
                    self.reloads += 1
                except OSError as exc:
                    # The registry decision stands; the operator must see that the broker lags.
                    log.error("broker reload failed: %s", exc)
