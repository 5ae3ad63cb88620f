"""Running a tmail program under strace, for the tests that count what it asks of the disk.

strace is installed through ``scripts/apt-ensure`` when missing (as Chromium, Dovecot and
PostgreSQL are), so these tests run on a fresh machine instead of skipping; they skip only
where strace cannot be installed or the kernel refuses ptrace (some containers).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def strace_binary() -> str:
    found = shutil.which("strace")
    if found is None:
        done = subprocess.run([str(REPO / "scripts" / "apt-ensure"), "strace"],
                              capture_output=True, text=True, timeout=900, check=False)
        found = shutil.which("strace")
        if found is None:
            pytest.skip("strace is not installed and scripts/apt-ensure could not install it: "
                        + (done.stderr.strip() or f"exit status {done.returncode}"))
    return found


def traced(args: list[str], trace: Path, calls: str,
           env: dict[str, str] | None = None) -> None:
    """``python <args>`` from the repository under ``strace -f -y -e trace=<calls>``, its
    trace written to ``trace``; fails the test if the program fails."""
    done = subprocess.run(
        [strace_binary(), "-f", "-qq", "-y", "-e", "signal=none", "-e", f"trace={calls}",
         "-o", str(trace), sys.executable, *args],
        cwd=REPO, env=env, capture_output=True, timeout=120)
    if done.returncode != 0 and b"ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.decode()[:200]}")
    assert done.returncode == 0, done.stderr.decode()
