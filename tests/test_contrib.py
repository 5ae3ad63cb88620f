"""The deployment files in contrib/ work with the real programs: systemd checks the units,
each unit's command starts tmail with the shipped environment file, and the cron line makes
a delivery pass. Paths are rewritten from /opt/tmail and /etc/tmail to this checkout and a
temp dir; nothing else in the files is changed."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, stop, wait_until
from tests.sink import Sink
from tmail import config as tmail_config
from tmail.queue import QueueStore

CONTRIB = REPO / "contrib"
UNITS = sorted((CONTRIB / "systemd").glob("*.service"))


def _env_file(tmp_path: Path) -> Path:
    """The shipped tmail.env, with a temp data dir and free loopback ports."""
    text = (CONTRIB / "systemd" / "tmail.env").read_text()
    replacements = {
        "/var/lib/tmail": str(tmp_path / "state"),
        "0.0.0.0:25": f"127.0.0.1:{free_port()}",
        "127.0.0.1:8080": f"127.0.0.1:{free_port()}",
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "tmail.env"
    path.write_text(text)
    return path


def _localize(text: str, env_file: Path) -> str:
    return text.replace("/etc/tmail/tmail.env", str(env_file)).replace("/opt/tmail", str(REPO))


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _unit_value(unit: str, key: str) -> str:
    [value] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]
    return value


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    env_file = _env_file(tmp_path)
    for unit in UNITS:
        (tmp_path / unit.name).write_text(_localize(unit.read_text(), env_file))
    result = subprocess.run(["systemd-analyze", "verify",
                             *(str(tmp_path / unit.name) for unit in UNITS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: path.stem)
def test_each_unit_runs_tmail_with_the_shipped_settings(unit: Path, tmp_path: Path) -> None:
    env_file = _env_file(tmp_path)
    text = _localize(unit.read_text(), env_file)
    for key in ("User", "StateDirectory", "Restart"):
        assert _unit_value(text, key) in ("tmail", "on-failure")
    env = {"PATH": "/usr/bin:/bin", **_read_env(env_file)}
    log = tmp_path / "unit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(shlex.split(_unit_value(text, "ExecStart")),
                                   cwd=_unit_value(text, "WorkingDirectory"), env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        bind = {"tmail-api": "TMAIL_API_BIND", "tmail-smtp": "TMAIL_SMTP_BIND"}.get(unit.stem)
        if bind is None:  # the runner: it must stay up, watching the queue
            assert not wait_until(lambda: process.poll() is not None, 2), log.read_text()
        else:
            host, port = env[bind].rsplit(":", 1)

            def listening() -> bool:
                assert process.poll() is None, log.read_text()
                with socket.socket() as sock:
                    return sock.connect_ex((host, int(port))) == 0

            assert wait_until(listening, 20), log.read_text()
    finally:
        # A gunicorn worker still booting when TERM comes boots first: under the parallel
        # suite that once took more than 10 s; gunicorn gives its workers 30 s to stop.
        stop(process, timeout=40)
    assert process.returncode in (0, -15), log.read_text()


def test_the_cron_line_makes_one_delivery_pass(tmp_path: Path) -> None:
    env_file = _env_file(tmp_path)
    with Sink() as sink:
        with open(env_file, "a") as extra:  # deliver to the loopback sink, not the internet
            extra.write(f"TMAIL_ROUTES={sink.route}\n")
        config = tmail_config.load(_read_env(env_file))
        store = QueueStore(config.queue_dir)
        [record] = store.enqueue(b"Subject: cron\r\n\r\nbody\r\n", "s@sender.test",
                                 ["someone@remote.test"])
        lines = [line for line in (CONTRIB / "cron" / "tmail").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
        [line] = lines
        fields = line.split(None, 6)
        assert fields[:5] == ["*"] * 5 and fields[5] == "tmail"
        command = _localize(fields[6], env_file)
        result = subprocess.run(["sh", "-c", command.replace("logger -t tmail-runner", "cat")],
                                capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert [m.rcpt_tos for m in sink.messages] == [["someone@remote.test"]], result.stdout
        assert store.get(record.id) is None
