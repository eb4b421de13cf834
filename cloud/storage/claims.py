"""Claim codes: how an installer vouches for a Pi before it exists in the registry.

Owns: creating a one-time, expiring code for a site and redeeming it exactly once, in the same
transaction that registers the device as pending (so a code can never enroll two devices).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.domain.devices import DeviceStatus
from cloud.storage.tables import claim_codes, device_keys, devices, sites

# Unambiguous alphabet (no 0/O, 1/I/L): codes are typed by installers.
_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


class ClaimError(ValueError):
    """A claim code that is unknown, expired or already used (one message for all three)."""


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().replace("-", "").encode()).hexdigest()


def new_code() -> str:
    """A code like GM-7KQ4-XW9P-3HTC (about 60 bits)."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    return "GM-" + "-".join(raw[i : i + 4] for i in range(0, 12, 4))


class ClaimStore:
    """Claim codes on the aggregator's database."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock

    async def create(self, site_id: str, created_by: str, ttl_s: int = 7 * 24 * 3600) -> str:
        """A new code for `site_id`; raises KeyError if the site does not exist."""
        now = int(self.clock() * 1000)
        code = new_code()
        async with self.engine.begin() as conn:
            site = await conn.execute(select(sites.c.site_id).where(sites.c.site_id == site_id))
            if site.first() is None:
                raise KeyError(site_id)
            await conn.execute(
                insert(claim_codes).values(
                    code_hash=_hash(code),
                    site_id=site_id,
                    created_by=created_by,
                    created_ms=now,
                    expires_ms=now + ttl_s * 1000,
                    used_by_device=None,
                )
            )
        return code

    async def redeem(
        self,
        code: str,
        device_id: str,
        public_key: bytes,
        kid: bytes,
        capacity_w: int,
        zone: str,
    ) -> str:
        """Register `device_id` as pending at the code's site; return the site id.

        Raises ClaimError for an unknown, expired or used code, ValueError for a device id or
        key that is already registered.
        """
        now = int(self.clock() * 1000)
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(claim_codes).where(claim_codes.c.code_hash == _hash(code))
                )
            ).first()
            if row is None or row.used_by_device is not None or row.expires_ms < now:
                raise ClaimError("the claim code is unknown, expired or already used")
            taken = await conn.execute(
                select(devices.c.device_id).where(devices.c.device_id == device_id)
            )
            if taken.first() is not None:
                raise ValueError(f"device {device_id!r} is already registered")
            if (
                await conn.execute(select(device_keys.c.kid).where(device_keys.c.kid == kid))
            ).first() is not None:
                raise ValueError("this signing key is already registered")
            used = await conn.execute(
                update(claim_codes)
                .where(
                    claim_codes.c.code_hash == row.code_hash, claim_codes.c.used_by_device.is_(None)
                )
                .values(used_by_device=device_id)
            )
            if used.rowcount != 1:  # another enrollment won the race
                raise ClaimError("the claim code is unknown, expired or already used")
            await conn.execute(
                insert(devices).values(
                    device_id=device_id,
                    site_id=row.site_id,
                    status=DeviceStatus.PENDING,
                    capacity_w=capacity_w,
                    zone=zone,
                    created_ms=now,
                )
            )
            await conn.execute(
                insert(device_keys).values(
                    kid=kid,
                    device_id=device_id,
                    public_key=public_key,
                    valid_from=now // 1000,
                    valid_until=None,
                )
            )
        return str(row.site_id)
