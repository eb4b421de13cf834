"""Mosquitto configuration for the production broker: mutual TLS, identities and an ACL.

Owns: rendering mosquitto.conf (a TLS listener that requires a client certificate signed by the
device CA, checks the CA's CRL and uses the certificate's CN as the MQTT username) and the ACL
file that confines each device to its own topics. Pure: returns text; the caller writes files.

Why per-device `user` blocks and not one `pattern` line (checked against Mosquitto 2.0.11):
a pattern can only substitute the username (%u = certificate CN = device id) and client id (%c).
The topic names the site before the device (gridmint/v1/sites/{site}/devices/{device}/...),
and the certificate's site (OU) is not available to the ACL. `pattern write
gridmint/v1/sites/+/devices/%u/tokens` is accepted and enforced by 2.0.11, but its `+` lets a
device publish as itself under ANY site. Per-device blocks bind the exact site and device, so
the ACL is generated from the device registry and the broker reloaded on every enrollment,
exactly as the CRL must be on every revocation. `render_acl(aggregator, None)` renders the
pattern form only on explicit request, for a fleet whose site is checked elsewhere (the
aggregator comparing the topic's site with the registry).

`tls_version tlsv1.2` is a minimum in Mosquitto 2.0 (clients negotiate TLS 1.3).

Reload: Mosquitto re-reads the ACL file (and the password file) on SIGHUP. 2.0.11 also re-reads
the listener's `crlfile` then (tested in tests/integration/test_broker_security.py); without a
SIGHUP the CRL loaded at start stays in force. See firmware-configs/mosquitto/README.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from protocol.topics import LEDGER_CHECKPOINT, ROOT, Channel, check_segment

DEFAULT_AGGREGATOR = "gridmint-aggregator"
DEVICE_WRITES = (Channel.TOKENS, Channel.TELEMETRY, Channel.STATUS, Channel.ACKS)
DEVICE_READS = (Channel.COMMANDS, Channel.RECEIPTS)


def _line_safe(value: str, what: str) -> str:
    if any(c in value for c in "\r\n") or not value.strip():
        raise ValueError(f"{what} {value!r} cannot go into a Mosquitto config line")
    return value


# Messages the broker sends a client before it waits for their PUBACKs; the aggregator's
# ingest batches (cloud.mqtt_ingest) are at most this long.
AGGREGATOR_INFLIGHT = 256
# Room in an MQTT PUBLISH packet besides its payload: fixed header, topic (gridmint/v1/sites/
# {site}/devices/{device}/tokens, segments of at most 64 characters), packet id.
PACKET_OVERHEAD = 1024


def input_limit_lines(max_message_bytes: int = 65536) -> list[str]:
    """The broker's share of the input limits (docs/operations.md, "Input limits").

    `max_packet_size`: a client that sends a bigger packet is disconnected, so a flood of big
    messages never reaches the aggregator or fills the broker's memory. It is the ingest limit
    (CloudSettings.max_message_bytes) plus the packet's overhead, not the ingest limit itself:
    a payload just over `max_message_bytes` still reaches ingest, which refuses it as
    `too_large` and counts it, where the broker's `message_size_limit` would drop it unseen.
    """
    return [f"max_packet_size {max_message_bytes + PACKET_OVERHEAD}"]


def render_mosquitto(
    conf_dir: Path,
    port: int,
    ca_path: Path,
    server_cert: Path,
    server_key: Path,
    crl_path: Path,
    acl_path: Path,
    plain_loopback_port: int | None = None,
    *,
    bind_address: str | None = None,
    loopback_password_file: Path | None = None,
    persistence: bool = False,
    log_file: Path | None = None,
    run_as_user: str | None = None,
    pid_file: Path | None = None,
    max_message_bytes: int = 65536,
) -> str:
    """mosquitto.conf text: a mutual-TLS listener on `port` and, optionally, a loopback one.

    `conf_dir` is where the broker keeps its persistence file (when `persistence`).
    The optional plain listener on 127.0.0.1:`plain_loopback_port` is for services on the
    broker host (the aggregator); it does NOT allow anonymous clients: it needs
    `loopback_password_file` (see `password_file_line`), and the same ACL applies there, so
    `gridmint-aggregator` logging in with its password gets the aggregator's rights.

    Started as root, Mosquitto switches to the `mosquitto` user before it reads the key, CRL,
    ACL and password files, so those must be readable by that user; `run_as_user` sets
    Mosquitto's `user` option instead (the tests, run as root in a private tmp dir, use "root").
    """
    paths = {
        "conf_dir": conf_dir,
        "ca_path": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "crl_path": crl_path,
        "acl_path": acl_path,
    }
    for what, p in paths.items():
        _line_safe(str(p), what)
    if plain_loopback_port is not None and loopback_password_file is None:
        raise ValueError("a plain loopback listener needs loopback_password_file")
    lines = [
        "# Generated by cloud/broker_config.py; edit the generator, not this file.",
        "per_listener_settings true",
        f"persistence {'true' if persistence else 'false'}",
        # The aggregator acknowledges tokens a batch at a time, after one transaction: the broker
        # must let it hold a batch's worth unacknowledged (Mosquitto's default is 20 in flight).
        f"max_inflight_messages {AGGREGATOR_INFLIGHT}",
        *input_limit_lines(max_message_bytes),
    ]
    if run_as_user is not None:
        lines.append(f"user {_line_safe(run_as_user, 'run_as_user')}")
    if persistence:
        lines.append(f"persistence_location {conf_dir}/")
    if log_file is not None:
        lines.append(f"log_dest file {_line_safe(str(log_file), 'log_file')}")
    if pid_file is not None:  # the aggregator sends SIGHUP to this pid after each decision
        lines.append(f"pid_file {_line_safe(str(pid_file), 'pid_file')}")
    lines += [
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "",
        "# Devices and the aggregator: mutual TLS, certificate CN = MQTT username.",
        f"listener {port} {_line_safe(bind_address, 'bind_address')}"
        if bind_address
        else f"listener {port}",
        "protocol mqtt",
        f"cafile {ca_path}",
        f"certfile {server_cert}",
        f"keyfile {server_key}",
        "require_certificate true",
        "use_identity_as_username true",
        f"crlfile {crl_path}",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"acl_file {acl_path}",
    ]
    if plain_loopback_port is not None:
        lines += [
            "",
            "# Services on this host only: plain TCP on loopback, username and password.",
            f"listener {plain_loopback_port} 127.0.0.1",
            "protocol mqtt",
            "allow_anonymous false",
            f"password_file {loopback_password_file}",
            f"acl_file {acl_path}",
        ]
    return "\n".join(lines) + "\n"


def _device_rules(site: str, device: str) -> list[str]:
    base = f"{ROOT}/sites/{site}/devices/{device}"
    return [
        *(f"topic write {base}/{ch.value}" for ch in DEVICE_WRITES),
        *(f"topic read {base}/{ch.value}" for ch in DEVICE_READS),
        f"topic read {LEDGER_CHECKPOINT}",
    ]


def render_acl(aggregator_identity: str, devices: Iterable[tuple[str, str]] | None) -> str:
    """The ACL file: the aggregator's rights and each device's own topics.

    `devices` is (site_id, device_id) for every approved device: each gets a `user` block
    that allows writing its tokens, telemetry, status and command acknowledgements and
    reading its commands and receipts, under its own site only. With `devices=None` one
    `pattern` block does the same for every certificate CN but with `+` for the site (see the
    module docstring).
    Everything not listed is denied, including `$SYS`.
    """
    check_segment(aggregator_identity, "aggregator identity")
    any_device = f"{ROOT}/sites/+/devices/+"
    lines = [
        "# Generated by cloud/broker_config.py from the device registry.",
        "# Reload the broker (SIGHUP) after regenerating it.",
        "",
        f"user {aggregator_identity}",
    ]
    lines += [f"topic read {any_device}/{ch.value}" for ch in DEVICE_WRITES]
    lines += [f"topic write {any_device}/{ch.value}" for ch in DEVICE_READS]
    lines.append(f"topic write {LEDGER_CHECKPOINT}")
    if devices is None:
        lines += ["", "# Every other certificate: its own device id, any site."]
        base = f"{ROOT}/sites/+/devices/%u"
        lines += [f"pattern write {base}/{ch.value}" for ch in DEVICE_WRITES]
        lines += [f"pattern read {base}/{ch.value}" for ch in DEVICE_READS]
        lines.append(f"pattern read {LEDGER_CHECKPOINT}")
    else:
        seen: set[str] = set()
        for site, device in sorted(devices):
            check_segment(site, "site id")
            check_segment(device, "device id")
            if device == aggregator_identity:
                raise ValueError(f"device id {device!r} is the aggregator's identity")
            if device in seen:
                raise ValueError(f"device id {device!r} is listed under two sites")
            seen.add(device)
            lines += ["", f"user {device}", *_device_rules(site, device)]
    return "\n".join(lines) + "\n"


def password_file_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One line of a Mosquitto 2.0 password file (PBKDF2-SHA512, as `mosquitto_passwd` writes)."""
    _line_safe(username, "username")
    if ":" in username:
        raise ValueError("a username in a password file cannot contain ':'")
    salt = salt if salt is not None else os.urandom(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}\n"
