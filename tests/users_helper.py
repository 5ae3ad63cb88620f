"""Running tmail as another user, for real: files written by root, read by the queue's owner.

Tests run as root. ``nobody`` cannot start this interpreter where it is installed (under
``/root``), so :func:`everyone_python` bind-mounts the interpreter's prefix on a path anyone
can reach, and processes started through it work as any user.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

NOBODY = 65534


@contextlib.contextmanager
def everyone_python() -> Iterator[list[str]]:
    """The command (and environment prefix) of a Python that any user can run."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs processes as several users")
    prefix = Path(sys.base_prefix)
    mount = Path(tempfile.mkdtemp(prefix="tmail-python-"))
    os.chmod(mount, 0o755)
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(prefix), str(mount)],
                          capture_output=True, check=False, timeout=30)
    if done.returncode != 0:
        os.rmdir(mount)
        pytest.skip(f"cannot bind-mount the interpreter: {done.stderr.decode().strip()}")
    try:
        yield [str(mount / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
        os.rmdir(mount)


def python_path() -> str:
    """PYTHONPATH for a process of :func:`everyone_python`: the repo and the venv's packages."""
    site = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    return os.pathsep.join([str(REPO), *site])


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A temp dir that other users can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="tmail-owner-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False, timeout=60)
