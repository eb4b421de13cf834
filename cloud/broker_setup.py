"""`gridmint cloud pki`: everything a production broker and aggregator need, in one folder.

Owns: creating (or reusing) the device CA, the broker's server certificate, the aggregator's
client certificate, the first CRL and ACL, mosquitto.conf, and an environment file that points
`gridmint cloud serve` at them. Re-running keeps the CA (devices already trust it) and renews
the rest.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cloud.broker_config import DEFAULT_AGGREGATOR, render_acl, render_mosquitto
from cloud.pki import DeviceCA, make_device_key_and_csr, write_private_key


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Where everything was written."""

    directory: Path
    ca_dir: Path
    mosquitto_conf: Path
    acl: Path
    crl: Path
    pid_file: Path
    aggregator_cert: Path
    aggregator_key: Path
    env_file: Path
    port: int

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"


def setup_broker(
    directory: Path,
    *,
    hosts: list[str],
    port: int = 8883,
    now: datetime,
    aggregator: str = DEFAULT_AGGREGATOR,
    run_as_user: str | None = None,
    server_days: int = 397,
    client_days: int = 397,
) -> BrokerFiles:
    """Write the CA, certificates, CRL, ACL, mosquitto.conf and cloud.env under `directory`."""
    for h in hosts:
        if not h or any(c in h for c in " \r\n/"):
            raise ValueError(f"--host {h!r} is not a host name or IP address")
    directory = directory.resolve()
    ca_dir = directory / "ca"
    if (ca_dir / "ca.key").exists():
        ca = DeviceCA.load(ca_dir)
    else:
        ca = DeviceCA.create("gridmint device CA", 3650, now)
        ca.save(ca_dir)
    srv_key, srv_cert = ca.issue_server_cert(hosts, server_days, now)
    write_private_key(directory / "server.key", srv_key)
    (directory / "server.crt").write_bytes(srv_cert)
    agg_key, agg_csr = make_device_key_and_csr(aggregator)
    agg_cert = ca.issue_client_cert(agg_csr, aggregator, "cloud", client_days, now)
    write_private_key(directory / "aggregator.key", agg_key)
    (directory / "aggregator.crt").write_bytes(agg_cert)
    crl = directory / "crl.pem"
    crl.write_bytes(ca.crl_pem(now))
    ca.save_state(ca_dir)
    acl = directory / "acl"
    if not acl.exists():  # the aggregator rewrites it from the registry when it starts
        acl.write_text(render_acl(aggregator, []))
    pid_file = directory / "mosquitto.pid"
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_mosquitto(
            directory,
            port,
            ca_dir / "ca.crt",
            directory / "server.crt",
            directory / "server.key",
            crl,
            acl,
            log_file=directory / "mosquitto.log",
            run_as_user=run_as_user,
            pid_file=pid_file,
        )
    )
    host = hosts[0]
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    env = directory / "cloud.env"
    settings = {
        "BROKER_URL": f"mqtts://{host}:{port}",
        "CLIENT_ID": aggregator,
        "BROKER_CA_FILE": ca_dir / "ca.crt",
        "BROKER_CERT_FILE": directory / "aggregator.crt",
        "BROKER_KEY_FILE": directory / "aggregator.key",
        "DEVICE_CA_DIR": ca_dir,
        "BROKER_ACL_FILE": acl,
        "BROKER_CRL_FILE": crl,
        "BROKER_PID_FILE": pid_file,
    }
    env.write_text("".join(f"GRIDMINT_CLOUD_{k}={v}\n" for k, v in settings.items()))
    return BrokerFiles(
        directory,
        ca_dir,
        conf,
        acl,
        crl,
        pid_file,
        directory / "aggregator.crt",
        directory / "aggregator.key",
        env,
        port,
    )
