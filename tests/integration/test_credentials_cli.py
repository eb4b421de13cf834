"""`provision enroll`, `rotate-key` and `renew-cert` as the installer runs them, against the real
aggregator (HTTP, device CA on disk, SQLite)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cloud.broker_setup import setup_broker
from cloud.pki import describe
from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from cloud.storage.accounts import AccountStore
from cloud.storage.claims import ClaimStore
from edge.keys import create_key_file, load_key_file
from edge.settings import load_settings
from protocol import cose
from tests.helpers.services import free_port


async def gridmint(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gridmint",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudRuntime]:
    files = setup_broker(
        tmp_path / "broker", hosts=["127.0.0.1"], port=free_port(), now=datetime.now(UTC)
    )
    rt = CloudRuntime(
        CloudSettings(
            _env_file=files.env_file,  # type: ignore[call-arg]
            database_url=f"sqlite:///{tmp_path / 'cloud.sqlite'}",
            deployment="gridmint-test",
            http_port=0,
        )
    )
    await rt.start(connect_mqtt=False)
    try:
        yield rt
    finally:
        await rt.stop()


async def _claim(rt: CloudRuntime) -> str:
    assert rt.store is not None
    accounts = AccountStore(rt.store.engine)
    owner = await accounts.create_account(
        "o@example.org", "o", "a long password", "homeowner", "approved"
    )
    await accounts.create_site("site-c", owner.account_id, "C")
    return await ClaimStore(rt.store.engine).create("site-c", owner.account_id, 600)


async def test_enroll_rotate_key_and_renew_certificate(cloud: CloudRuntime, tmp_path: Path) -> None:
    cfg = tmp_path / "pi" / "edge.toml"
    cfg.parent.mkdir()
    cfg.write_text(  # as `scan --write` leaves it: placeholders and a meter
        'device_id = "CHANGE-ME-device"\nsite_id = "CHANGE-ME-site"\n\n[[meters]]\n'
        'name = "grid"\nregister_map = "eastron/sdm630"\nport = 1502\n'
    )
    rc, out, err = await gridmint(
        "provision",
        "enroll",
        "--cloud",
        cloud.url,
        "--claim",
        await _claim(cloud),
        "--config",
        str(cfg),
        "--device-id",
        "pi-cred",
        "--capacity-w",
        "3000",
    )
    assert rc == 0, err
    settings = load_settings(cfg)
    assert settings.tls_cert_file is not None
    first_cert = describe(settings.tls_cert_file.read_bytes())
    assert (first_cert.common_name, first_cert.site_id) == ("pi-cred", "site-c")
    old_pub = cose.public_bytes(load_key_file(settings.key_file).public_key())

    # A leftover key from an interrupted rotation the cloud never heard of is discarded.
    create_key_file(settings.key_file.with_name(settings.key_file.name + ".next"))
    rc, out, err = await gridmint("provision", "rotate-key", "--config", str(cfg))
    assert rc == 0, err
    new_pub = cose.public_bytes(load_key_file(settings.key_file).public_key())
    assert new_pub != old_pub
    assert not settings.key_file.with_name(settings.key_file.name + ".next").exists()
    assert settings.key_file.stat().st_mode & 0o777 == 0o600
    assert f"new signing key {cose.key_id(new_pub).hex()}" in " ".join(out.split())
    async with httpx.AsyncClient(base_url=cloud.url) as api:
        keys = (await api.get("/api/v1/devices/pi-cred/keys")).json()
    assert [k["kid"] for k in keys] == [cose.key_id(old_pub).hex(), cose.key_id(new_pub).hex()]
    assert keys[0]["valid_until"] is not None and keys[1]["valid_until"] is None

    rc, out, err = await gridmint("provision", "renew-cert", "--config", str(cfg))
    assert rc == 0, err
    renewed = describe(settings.tls_cert_file.read_bytes())
    assert renewed.serial != first_cert.serial
    assert (renewed.common_name, renewed.site_id) == ("pi-cred", "site-c")
    assert settings.tls_key_file is not None
    assert settings.tls_key_file.stat().st_mode & 0o777 == 0o600

    # Once the device is revoked, neither works, and the message is plain.
    assert cloud.store is not None
    await cloud.store.set_device_status("pi-cred", "revoked")
    for command in ("rotate-key", "renew-cert"):
        rc, out, err = await gridmint("provision", command, "--config", str(cfg))
        assert rc == 1, command
        assert "revoked" in err or "may not" in err, err
        assert "Traceback" not in err


async def test_install_writes_unit_and_rules_under_a_root(tmp_path: Path) -> None:
    rc, out, err = await gridmint(
        "provision",
        "install",
        "--root",
        str(tmp_path),
        "--config",
        "/etc/gridmint/edge.toml",
        "--user",
        "pi-agent",
    )
    assert rc == 0, err
    unit = (tmp_path / "etc/systemd/system/gridmint-edge.service").read_text()
    assert (
        "ExecStart=/opt/gridmint/.venv/bin/gridmint edge run --config /etc/gridmint/edge.toml"
        in unit
    )
    assert "User=pi-agent" in unit and "Type=notify" in unit
    rules = (tmp_path / "etc/udev/rules.d/99-gridmint-serial.rules").read_text()
    assert "gridmint-rs485-" in rules
    assert "systemctl daemon-reload" in err  # not run under a scratch root: printed instead
    unwritable = tmp_path / "ro"
    unwritable.mkdir()
    (unwritable / "etc").write_text("a file where a folder should be")
    rc, out, err = await gridmint("provision", "install", "--root", str(unwritable))
    assert rc == 1 and "cannot write" in err and "Traceback" not in err


async def test_aggregator_refreshes_the_crl_before_it_expires(tmp_path: Path) -> None:
    from cryptography import x509

    files = setup_broker(
        tmp_path / "broker", hosts=["127.0.0.1"], port=free_port(), now=datetime.now(UTC)
    )
    rt = CloudRuntime(
        CloudSettings(
            _env_file=files.env_file,  # type: ignore[call-arg]
            database_url=f"sqlite:///{tmp_path / 'cloud.sqlite'}",
            http_port=0,
            crl_refresh_s=0.2,
        )
    )
    await rt.start(connect_mqtt=False, serve_http=False)
    try:

        def crl_number() -> int:
            crl = x509.load_pem_x509_crl(files.crl.read_bytes())
            return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)

        first = crl_number()
        await asyncio.sleep(1.0)
        assert crl_number() >= first + 2  # rewritten on its own, several times
    finally:
        await rt.stop()
