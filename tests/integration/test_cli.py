"""The command line: plain errors (no tracebacks) and the token decoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.records import FakeDevice

GRIDMINT = [sys.executable, "-m", "gridmint"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GRIDMINT, *args], input=stdin.decode() if stdin else None, capture_output=True,
        text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
    )


def test_token_decode_prints_the_record_and_checks_the_signature(tmp_path: Path) -> None:
    dev = FakeDevice("pi-cli")
    tok = dev.next_token(generated_wh=321)
    f = tmp_path / "record.cbor"
    f.write_bytes(tok.envelope)
    r = run("token", "decode", str(f), "--public-key", dev.public_key.hex(),
            "--deployment", "gridmint-test")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["energy_wh"]["generated"] == 321
    assert out["token_id"] == tok.token_id
    assert out["signature"] == "valid"

    r = run("token", "decode", "--hex", tok.envelope.hex(), "--public-key",
            dev.public_key.hex(), "--deployment", "production")
    assert r.returncode == 1
    assert "INVALID" in r.stdout


def test_bad_input_gives_a_plain_message_not_a_traceback(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff\x00 not a record")
    cases = [
        (["token", "decode", str(garbage)], "not a valid gridmint record"),
        (["edge", "run", "--config", str(tmp_path / "missing.toml")], "does not exist"),
        (["demo", "--homes", "0"], "Invalid value for '--homes'"),  # wording varies by typer
        (["demo", "--no-such-flag"], "No such option"),
        (["demo", "--broker", "http://x"], "must look like mqtt://"),
        (["cloud", "add-device", "--device-id", "a/b", "--site-id", "s", "--public-key", "00"],
         "not a valid id"),
    ]
    for args, expected in cases:
        r = run(*args)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr + r.stdout, args
        assert expected in r.stderr + r.stdout, (args, r.stderr)


def test_edge_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('device_id = "pi-1"\nsite_id = "s"\nkey_file = "k"\nstate_db = "db"\n'
                   'interval_s = 600\nmeters = []\n')
    r = run("edge", "run", "--config", str(cfg))
    assert r.returncode == 1
    assert "interval_s" in r.stderr
    assert "Traceback" not in r.stderr
