"""`gridmint provision install`: put the service unit and udev rules in place on the Pi.

Owns: copying firmware-configs/systemd/gridmint-edge.service and firmware-configs/udev/*.rules
under a root directory (`/` on a Pi; a scratch folder in tests and for review), pointing the
unit at the chosen config and executable, and telling systemd and udev to reload.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.enroll import write_file

UNIT_NAME = "gridmint-edge.service"
DEFAULT_EXEC = "/opt/gridmint/.venv/bin/gridmint"
DEFAULT_CONFIG = "/etc/gridmint/edge.toml"


class InstallError(Exception):
    """Nothing or only part was installed; the message says what and why."""


@dataclass
class Installed:
    """Files written and commands run (or to run)."""

    files: list[Path] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    skipped_commands: list[str] = field(default_factory=list)


def firmware_configs() -> Path:
    """The firmware-configs folder of a checkout or of the installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent / "firmware-configs",
        here.parent / "gridmint" / "firmware-configs",
    ):
        if (candidate / "systemd" / UNIT_NAME).exists():
            return candidate
    raise InstallError("firmware-configs (the unit and udev rules) is not installed with gridmint")


def render_unit(template: str, executable: str, config: str, user: str) -> str:
    """The unit text with this Pi's executable, config path and service user."""
    out = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={executable} edge run --config {config}"
        elif line.startswith("User="):
            line = f"User={user}"
        elif line.startswith("Group="):
            line = f"Group={user}"
        out.append(line)
    return "\n".join(out) + "\n"


Runner = Callable[[Sequence[str]], int]


def _run(args: Sequence[str]) -> int:
    return subprocess.run(list(args), check=False).returncode  # noqa: S603


def install(
    root: Path,
    *,
    config: str = DEFAULT_CONFIG,
    executable: str = DEFAULT_EXEC,
    user: str = "gridmint",
    reload: bool = True,
    run: Runner = _run,
) -> Installed:
    """Write the unit and rules under `root`; reload systemd and udev when `root` is `/`."""
    src = firmware_configs()
    result = Installed()
    unit = render_unit((src / "systemd" / UNIT_NAME).read_text(), executable, config, user)
    targets = [(root / "etc/systemd/system" / UNIT_NAME, unit.encode())]
    targets += [
        (root / "etc/udev/rules.d" / rules.name, rules.read_bytes())
        for rules in sorted((src / "udev").glob("*.rules"))
    ]
    for path, data in targets:
        try:
            write_file(path, data, 0o644)
        except PermissionError:
            raise InstallError(f"cannot write {path}: run install with sudo") from None
        except OSError as exc:
            raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None
        result.files.append(path)
    commands = [
        ["systemctl", "daemon-reload"],
        ["udevadm", "control", "--reload-rules"],
        ["udevadm", "trigger", "--subsystem-match=tty"],
        ["systemctl", "enable", "--now", UNIT_NAME],
    ]
    for cmd in commands:
        text = " ".join(cmd)
        if reload and root == Path("/") and shutil.which(cmd[0]):
            if run(cmd) != 0:
                raise InstallError(f"`{text}` failed; the files are in place, run it by hand")
            result.commands.append(text)
        else:
            result.skipped_commands.append(text)
    return result
