"""Enrollment pins the aggregator's dispatch key, as it pins the ledger key, and tolerates a
cloud that has none."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.cloud_http import CloudHttpError
from edge.settings import load_settings
from provisioning import enroll as enroll_mod

KEY = "ab" * 32


def _fake_cloud(dispatch: Any) -> Any:
    def http_json(method: str, url: str, body: Any, timeout_s: float) -> Any:
        if url.endswith("/api/v1/enroll"):
            return {"device_id": "pi-9", "site_id": "site-9", "deployment": "dep"}
        if url.endswith("/api/v1/ledger/key"):
            raise CloudHttpError("404: no ledger here")
        if url.endswith("/api/v1/dispatch/key"):
            if isinstance(dispatch, Exception):
                raise dispatch
            return dispatch
        raise AssertionError(url)

    return http_json


@pytest.mark.parametrize(
    ("answer", "pinned"),
    [
        ({"public_key": KEY}, KEY),
        ({"public_key": KEY.upper()}, KEY),
        (CloudHttpError("404: not found"), None),
        ({"other": 1}, None),
        ({"public_key": "not hex at all"}, None),
        ({"public_key": "ab" * 31}, None),
        (["a list"], None),
    ],
    ids=["pinned", "upper-case", "no-route", "no-field", "not-hex", "short", "not-an-object"],
)
def test_enroll_pins_the_dispatch_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Any, pinned: str | None
) -> None:
    monkeypatch.setattr(enroll_mod, "http_json", _fake_cloud(answer))
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[[meters]]\nname = "pv"\nregister_map = "eastron/sdm630"\n')
    enroll_mod.enroll(cfg, "http://cloud.example", "CODE", capacity_w=4000)
    doc = tomllib.loads(cfg.read_text())
    assert doc.get("dispatch_key") == pinned
    assert load_settings(cfg, {}).dispatch_key == (pinned or "")  # the agent accepts it
