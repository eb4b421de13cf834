"""A wheel of this checkout and fresh virtual environments with it installed (not editable).

Shared by tests/integration/test_wheel_install.py and benchmarks/edge.py --fresh-venv: they run
gridmint the way the installer guide installs it on a Pi, away from the source tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Variables that would let a child process import this checkout instead of the installed wheel.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything pointing at the checkout or its virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    env.update(extra)
    return env


def build_wheel(out_dir: Path) -> Path:
    """Build gridmint's wheel from this checkout into out_dir (pip's build isolation)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(REPO)],
        check=True,
        timeout=600,
        capture_output=True,
        env=clean_env(),
        cwd=out_dir,
    )
    wheels = sorted(out_dir.glob("gridmint-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one gridmint wheel in {out_dir}, found {wheels}")
    return wheels[0]


def make_venv(directory: Path, requirement: str, compile_bytecode: bool = True) -> Path:
    """A new virtualenv at `directory` with `requirement` (e.g. '<wheel>[edge]') installed.

    The venv has no pip of its own: this interpreter's pip installs into it (`pip --python`),
    which saves the few seconds ensurepip takes. `compile_bytecode=False` skips pip's .pyc
    compilation (about half the install time; the modules compile when first imported).
    Returns the venv's python.
    """
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "venv", "--without-pip", str(directory)],
        check=True,
        timeout=120,
        env=clean_env(),
    )
    python = directory / "bin" / "python"
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         *([] if compile_bytecode else ["--no-compile"]), requirement],
        timeout=900,
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=directory,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stdout}\n{done.stderr}")
    return python


def installed_versions(python: Path, distributions: tuple[str, ...]) -> dict[str, str]:
    """The version of each distribution in the interpreter's environment ('-': not installed)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = '-'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(  # noqa: S603
        [str(python), "-c", code, *distributions],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=python.parent,
    )
    return dict(json.loads(done.stdout))
