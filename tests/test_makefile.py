"""The set-up order of the two README commands: on a fresh Debian machine the system
packages (npm among them) are installed before anything runs npm."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", ["setup", "setup-test"])
def test_system_packages_come_before_npm_and_pip(target: str) -> None:
    # -n: print the commands without running them; -B: as if nothing were built yet
    out = subprocess.run(
        ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()

    def first(needle: str) -> int:
        return next(i for i, line in enumerate(out) if needle in line)

    system = first("scripts/setup_system.sh")
    assert system < first("npm ci"), out
    assert system < first("pip install"), out
    assert ("--test" in out[system]) == (target == "setup-test")
