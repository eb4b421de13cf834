"""Shared parts of the browser tests: headless Chromium and a real aggregator on SQLite."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (./scripts/test installs it)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: ./scripts/test installs it")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def cloud_settings() -> dict[str, Any]:
    """Extra CloudSettings for the `cloud` fixture; a test module overrides this fixture."""
    return {}


@pytest.fixture
async def cloud(tmp_path: Path, cloud_settings: dict[str, Any]) -> AsyncIterator[CloudRuntime]:
    """The aggregator serving HTTP on a free port, without a broker."""
    rt = CloudRuntime(
        CloudSettings(
            database_url=f"sqlite:///{tmp_path / 'cloud.sqlite'}",
            deployment="gridmint-test",
            http_port=0,
            **cloud_settings,
        )
    )
    await rt.start(connect_mqtt=False)
    try:
        yield rt
    finally:
        await rt.stop()


# The DERMS aggregator with simulated Pis on a real Mosquitto (tests/browser/derms.py).
from tests.browser.derms import derms as derms  # noqa: E402
