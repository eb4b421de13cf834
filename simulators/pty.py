"""Pseudo-terminal pairs, so RTU and VE.Direct simulators run through a real serial stack.

Owns: starting `socat` (Debian package `socat`) to link two pseudo-terminals by path: a simulator
opens one end, the edge agent's serial driver the other, exactly as it would open /dev/ttyUSB0.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    """Two linked pseudo-terminals at `device_path` (for the agent) and `sim_path`."""

    def __init__(self, folder: Path, name: str = "tty"):
        self.device_path = folder / f"{name}-device"
        self.sim_path = folder / f"{name}-sim"
        self._proc: subprocess.Popen[bytes] | None = None

    def open(self, timeout_s: float = 5.0) -> PtyPair:
        """Start socat and wait until both ends exist."""
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat is not installed (Debian package socat)")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own paths
            [
                socat,
                f"pty,raw,echo=0,link={self.device_path}",
                f"pty,raw,echo=0,link={self.sim_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not (self.device_path.exists() and self.sim_path.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise PtyPairError(f"socat did not create {self.device_path}")
            time.sleep(0.01)  # noqa: TID251 - a few ms at set-up, before any loop runs
        return self

    def unplug(self) -> None:
        """Kill socat: both ends vanish, as when a USB adapter is pulled."""
        self.close()

    def close(self) -> None:
        """Stop socat and remove the links."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

    def __enter__(self) -> PtyPair:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
