"""`gridmint provision enroll`: join a site with a claim code.

Owns: creating the device's keys (the Ed25519 signing key and a P-256 TLS key with its CSR),
the enrollment call to the cloud, and writing what comes back: the client certificate, the CA
bundle and the identity settings in the edge TOML (meters written by `scan --write` are kept).

Order matters for "loses nothing": the signing key is created (or reused) before the call, so
a failed call can be retried with the same identity; the TLS key is written only once the
cloud has issued its certificate, and every file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge.cloud_http import CloudHttpError, http_json
from edge.keys import KeyFileError, load_or_create_key
from protocol import cose
from protocol.tls_identity import make_device_key_and_csr
from protocol.topics import TopicError, check_segment

SIGNING_KEY_FILE = "device.key"
TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"
CA_FILE = "ca.crt"
STATE_DB = "edge.sqlite"
_TOP_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TABLE = re.compile(r"^\s*\[")


# Enrollment did not happen; the message says why in plain words (a refusal by the cloud, an
# unreachable cloud, or a local problem).
EnrollError = CloudHttpError


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What the cloud assigned and where it was written."""

    device_id: str
    site_id: str
    status: str
    broker_url: str
    config: Path
    files: tuple[Path, ...]


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`, created with `mode` (never wider for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def set_top_level(text: str, values: dict[str, str | int]) -> str:
    """Set top-level keys of a TOML document, keeping everything else (meters) as it was."""
    lines = text.splitlines()
    first_table = next((i for i, line in enumerate(lines) if _TABLE.match(line)), len(lines))
    rendered = {
        k: f"{k} = {_toml_str(v) if isinstance(v, str) else int(v)}" for k, v in values.items()
    }
    done: set[str] = set()
    for i in range(first_table):
        m = _TOP_KEY.match(lines[i])
        if m and m.group(1) in rendered:
            lines[i] = rendered[m.group(1)]
            done.add(m.group(1))
    new = [rendered[k] for k in values if k not in done]
    out = lines[:first_table] + new + ([""] if new and first_table < len(lines) else [])
    result = "\n".join(out + lines[first_table:]) + "\n"
    tomllib.loads(result)  # raises if the edit broke the document
    return result


def _chown(paths: list[Path], owner: str | None) -> None:
    if owner is None:
        return
    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise EnrollError(f"--owner: there is no user {owner!r} (create it first)") from None
    for p in paths:
        try:
            os.chown(p, pw.pw_uid, pw.pw_gid)
        except PermissionError:
            raise EnrollError(f"cannot give {p} to {owner}: run enroll with sudo") from None


def enroll(
    config: Path,
    cloud_url: str,
    claim_code: str,
    *,
    capacity_w: int,
    device_id: str | None = None,
    zone: str = "",
    owner: str | None = None,
    timeout_s: float = 20.0,
) -> Enrolled:
    """Enroll this Pi and write its identity next to `config`; EnrollError on any failure."""
    cloud_url = cloud_url.rstrip("/")
    if device_id is not None:
        try:
            check_segment(device_id, "device id")
        except TopicError as exc:
            raise EnrollError(str(exc)) from None
    folder = config.parent
    try:
        text = config.read_text(encoding="utf-8") if config.exists() else ""
        doc = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EnrollError(f"cannot use {config}: {exc}") from None
    key_path = Path(str(doc.get("key_file", SIGNING_KEY_FILE)))
    key_path = key_path if key_path.is_absolute() else folder / key_path
    try:
        signing_key = load_or_create_key(key_path)
    except (KeyFileError, OSError) as exc:
        raise EnrollError(str(exc)) from None
    public_key = cose.public_bytes(signing_key.public_key())
    # The CSR's name is informational: the CA writes the assigned id into the certificate.
    tls_key_pem, csr_pem = make_device_key_and_csr(device_id or "gridmint-device")
    answer = http_json(
        "POST",
        f"{cloud_url}/api/v1/enroll",
        {
            "claim_code": claim_code.strip(),
            "public_key": public_key.hex(),
            "device_id": device_id,
            "capacity_w": capacity_w,
            "zone": zone,
            "csr": csr_pem.decode(),
        },
        timeout_s,
    )
    try:
        assigned = str(answer["device_id"])
        site_id = str(answer["site_id"])
        check_segment(assigned, "device id")
        check_segment(site_id, "site id")
    except (KeyError, TypeError, TopicError) as exc:
        raise EnrollError(f"the cloud's answer is not an enrollment result: {exc}") from None
    cert_pem = str(answer.get("client_cert") or "").encode()
    ca_pem = str(answer.get("ca_bundle") or "").encode()
    values: dict[str, str | int] = {
        "device_id": assigned,
        "site_id": site_id,
        "deployment": str(answer.get("deployment") or "gridmint-dev"),
        "broker_url": str(answer.get("broker_url") or "mqtt://127.0.0.1:1883"),
        "cloud_url": cloud_url,
        "capacity_w": capacity_w,
        "key_file": str(key_path) if key_path.parent != folder else key_path.name,
    }
    if zone:
        values["zone"] = zone
    try:  # pin the ledger's checkpoint key now, over the same connection that enrolled us
        ledger = http_json("GET", f"{cloud_url}/api/v1/ledger/key", None, timeout_s)
        values["ledger_key"] = str(ledger["verifier_key"])
    except (CloudHttpError, KeyError, TypeError):
        pass  # an aggregator without a ledger: the agent then skips proof checks
    try:  # and the dispatch key its commands are signed with
        dispatch = http_json("GET", f"{cloud_url}/api/v1/dispatch/key", None, timeout_s)
        dispatch_key = str(dispatch["public_key"]).lower()
        if len(dispatch_key) == 64 and bytes.fromhex(dispatch_key):
            values["dispatch_key"] = dispatch_key
    except (CloudHttpError, KeyError, TypeError, ValueError):
        pass  # an aggregator without dispatch: the agent then takes no commands
    if "state_db" not in doc:
        values["state_db"] = STATE_DB
    written = [key_path]
    try:
        if cert_pem:
            write_file(folder / TLS_KEY_FILE, tls_key_pem, 0o600)
            write_file(folder / TLS_CERT_FILE, cert_pem, 0o644)
            write_file(folder / CA_FILE, ca_pem, 0o644)
            written += [folder / TLS_KEY_FILE, folder / TLS_CERT_FILE, folder / CA_FILE]
            values |= {
                "tls_ca_file": CA_FILE,
                "tls_cert_file": TLS_CERT_FILE,
                "tls_key_file": TLS_KEY_FILE,
            }
        new_text = set_top_level(text, values)
        write_file(config, new_text.encode(), 0o640)
        written.append(config)
    except OSError as exc:
        raise EnrollError(
            f"enrolled as {assigned}, but writing {exc.filename or folder} failed: "
            f"{exc.strerror or exc}; free the space or fix the permission and run enroll "
            "again with a new claim code"
        ) from None
    _chown(written, owner)
    return Enrolled(
        assigned,
        site_id,
        str(answer.get("status", "pending")),
        str(values["broker_url"]),
        config,
        tuple(written),
    )
