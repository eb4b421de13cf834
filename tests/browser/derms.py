"""A DERMS aggregator for the browser tests: a real Mosquitto, the aggregator on SQLite with its
live fleet and dispatch, and simulated Pis (simulators/fleet_derms.py) that send telemetry and
answer commands, on sites placed on a map, with a grid operator and a homeowner to log in as."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from cloud.runtime import CloudRuntime
from cloud.storage.accounts import AccountStore
from simulators.fleet import FleetDevice, make_fleet
from simulators.fleet_derms import DermsFleet
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.services import Mosquitto
from tests.helpers.waiting import until

DEPLOYMENT = "gridmint-test"
PASSWORD = "correct horse battery"  # noqa: S105 - a test credential
OPERATOR = "ops@example.org"
HOMEOWNER = "hal@example.org"
N = 6
# Three sites near Adelaide in the north zone, three further south; one device per site.
PLACES = [
    (-34.90, 138.60),
    (-34.93, 138.66),
    (-34.88, 138.52),
    (-35.02, 138.55),
    (-35.06, 138.62),
    (-35.10, 138.50),
]


@dataclass
class Derms:
    runtime: CloudRuntime
    fleet: DermsFleet
    devices: list[FleetDevice]

    @property
    def url(self) -> str:
        return self.runtime.url


@pytest.fixture
async def derms(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Derms]:
    runtime = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        mosquitto.url,
        DEPLOYMENT,
        dispatch_tick_s=0.2,
    )
    await runtime.start()
    assert runtime.store is not None and runtime.fleet is not None
    assert runtime.dispatch is not None and runtime.mqtt is not None
    accounts = AccountStore(runtime.store.engine)
    await accounts.create_account(OPERATOR, "Olga", PASSWORD, "grid_operator", "approved")
    hal = await accounts.create_account(HOMEOWNER, "Hal", PASSWORD, "homeowner", "approved")
    other = await accounts.create_account(
        "nia@example.org", "Nia", PASSWORD, "homeowner", "approved"
    )
    devices = make_fleet(N, prefix="pi")
    for i, d in enumerate(devices):
        zone = "north" if i < N // 2 else "south"
        owner = hal.account_id if i == 0 else other.account_id
        await accounts.create_site(d.site_id, owner, f"Home {i}", zone=zone)
        await runtime.fleet.store.set_site_location(d.site_id, *PLACES[i])
        await runtime.store.add_device(
            d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w, zone=zone
        )
    assert await runtime.fleet.load() == N
    assert await runtime.mqtt.wait_ready(10)
    fleet = DermsFleet(
        devices,
        mosquitto.url,
        DEPLOYMENT.encode(),
        runtime.dispatch.public_key,
        telemetry_every_s=0.5,
    )
    await fleet.start()
    try:
        await until(
            lambda: runtime.fleet is not None and runtime.fleet.state.totals["all"].online == N,
            timeout_s=20,
        )
        yield Derms(runtime, fleet, devices)
    finally:
        await fleet.stop()
        await runtime.stop()


async def log_in(page: Page, base: str, email: str, lands_on: str) -> None:
    """Log in through the form and wait for the page the role lands on."""
    await page.goto(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base + lands_on)
