"""Pipe targets: an alias whose mail goes to a program's standard input (Postfix's pipe(8)).

The command comes from the directory, the message from anyone: the command is split as a
shell would split it (``shlex``), with no expansion and no shell, and runs as
``TMAIL_PIPE_USER`` (its primary group only, none of the runner's groups) in a clean
environment, in a process group of its own so that a timeout kills everything it started.
Its exit status decides, as with Postfix: 0 delivered, 75 (``EX_TEMPFAIL``) deferred, any
other status bounced with the first line of its standard error. A death by signal, a
timeout, and whatever stops the command from starting at all (a missing program, an unknown
user: our configuration, not the message) defer the record.

A pipe runs in one of the runner's delivery threads, like a local or an SMTP delivery: the
others go on meanwhile. Its standard error is read as it comes (at most
:data:`STDERR_LIMIT` bytes kept, the rest drained) so that a chatty program never blocks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from queue_runner.results import RecipientResult, failure
from queue_runner.transports import Outgoing
from tmail import maildir
from tmail.config import Config

RELAY = "pipe"
EX_TEMPFAIL = 75
STDERR_LIMIT = 4096
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
_CHUNK = 65536

# sysexits.h statuses as enhanced status codes, as Postfix's sys_exits table gives them.
_SYSEXITS = {64: "5.3.0", 65: "5.6.0", 66: "5.3.0", 67: "5.1.1", 68: "5.1.2", 69: "5.3.0",
             70: "5.3.0", 71: "5.3.0", 72: "5.3.0", 73: "5.2.0", 74: "5.3.0", 76: "5.5.0",
             77: "5.7.0", 78: "5.3.5"}


class _Unusable(Exception):
    """The command cannot be run as configured: our problem, so the record waits."""


@dataclass(frozen=True)
class _Identity:
    """Who the command runs as: ``switch`` holds Popen's user/group arguments (empty when
    the runner already is that user)."""

    name: str
    home: str
    switch: dict[str, Any]


@dataclass(frozen=True)
class _Finished:
    status: int | None  # None: timed out
    stderr: bytes

    @property
    def first_line(self) -> str:
        for line in self.stderr.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip()
        return ""


class PipeTransport:
    """Delivers each recipient of ``message`` (records with Transport "pipe") to
    ``message.pipe``, once per recipient as pipe(8) does without its ``D`` flag."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def close_idle(self) -> None:
        """Nothing is kept between messages."""

    def close(self) -> None:
        """Nothing is kept between messages."""

    def send(self, message: Outgoing) -> list[RecipientResult]:
        originals = list(message.orig_rcpts) or [""] * len(message.recipients)
        return [self._deliver(message, rcpt, original)
                for rcpt, original in zip(message.recipients, originals, strict=True)]

    def _deliver(self, message: Outgoing, rcpt: str, original: str) -> RecipientResult:
        try:
            argv = _split(message.pipe)
            identity = _identity(self._config.pipe_user)
        except _Unusable as exc:
            return failure(451, f"4.3.5 {exc}", RELAY)
        env = {"PATH": SEARCH_PATH, "HOME": identity.home, "USER": identity.name,
               "LOGNAME": identity.name, "SENDER": message.mail_from, "RECIPIENT": rcpt,
               "ORIGINAL_RECIPIENT": original or rcpt}
        stdin = maildir.local_copy(message.raw, message.mail_from, rcpt)
        try:
            finished = _run(argv, stdin, env, identity, self._config.pipe_timeout)
        except OSError as exc:  # the program could not be started (missing, not executable)
            return failure(451, f"4.3.5 cannot run {argv[0]}: {exc.strerror or exc}", RELAY)
        return _result(finished, argv[0], self._config.pipe_timeout)


def _split(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise _Unusable(f"pipe command cannot be split: {exc}") from None
    if not argv:
        raise _Unusable("empty pipe command")
    return argv


def _identity(name: str) -> _Identity:
    """``name``'s ids, resolved for each delivery (a user created later is found). Only root
    can switch users; a runner that is not root runs pipes only if it is that user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise _Unusable(f"TMAIL_PIPE_USER {name!r} does not exist") from None
    if entry.pw_uid == 0:
        raise _Unusable(f"TMAIL_PIPE_USER {name!r} is root: pipe commands never run as root")
    if os.geteuid() == 0:
        switch = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    elif os.geteuid() == entry.pw_uid:
        switch = {}
    else:
        raise _Unusable(f"the runner is not root and cannot run pipe commands as {name!r}")
    return _Identity(name, entry.pw_dir, switch)


def _run(argv: list[str], stdin: bytes, env: dict[str, str], identity: _Identity,
         timeout: float) -> _Finished:
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env, cwd="/", close_fds=True,
                               start_new_session=True, **identity.switch)
    stderr = bytearray()
    finished = False
    try:
        finished = _exchange(process, stdin, stderr, time.monotonic() + timeout)
    finally:
        if not finished:
            _kill_group(process)
        for stream in (process.stdin, process.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        process.wait()
    return _Finished(process.returncode if finished else None, bytes(stderr))


def _exchange(process: subprocess.Popen[bytes], stdin: bytes, stderr: bytearray,
              deadline: float) -> bool:
    """Feed stdin and drain stderr until both are done and the process has exited; False
    when the deadline came first. A command that exits without reading its input is not an
    error here: its exit status says what it did."""
    assert process.stdin is not None and process.stderr is not None
    view, offset = memoryview(stdin), 0
    os.set_blocking(process.stdin.fileno(), False)
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdin, selectors.EVENT_WRITE)
        selector.register(process.stderr, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                if key.fileobj is process.stdin:
                    offset = _write(process.stdin.fileno(), view, offset)
                    if offset >= len(view):
                        selector.unregister(process.stdin)
                        process.stdin.close()
                else:
                    chunk = os.read(process.stderr.fileno(), _CHUNK)
                    if not chunk:
                        selector.unregister(process.stderr)
                    stderr += chunk[:max(0, STDERR_LIMIT - len(stderr))]
    try:
        process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _write(fd: int, view: memoryview, offset: int) -> int:
    """The new offset after one non-blocking write; the end when the reader has gone."""
    try:
        return offset + os.write(fd, view[offset:offset + _CHUNK])
    except BlockingIOError:
        return offset
    except BrokenPipeError:
        return len(view)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command and whatever it started (its session's process group)."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, signal.SIGKILL)


def _result(finished: _Finished, program: str, timeout: float) -> RecipientResult:
    status, line = finished.status, finished.first_line
    said = f": {line}" if line else ""
    if status is None:
        return failure(451, f"4.3.0 {program}: command time limit of {timeout:g}s exceeded",
                       RELAY)
    if status == 0:
        return RecipientResult(250, f"2.0.0 delivered to command: {program}", RELAY)
    if status == EX_TEMPFAIL:
        return failure(451, f"4.3.0 {program}: temporary failure (exit status 75){said}",
                       RELAY)
    if status < 0:  # killed by a signal: a crash, not a verdict on the message
        return failure(451, f"4.3.0 {program}: command died with signal {-status}{said}",
                       RELAY)
    text = f"{_SYSEXITS.get(status, '5.3.0')} {program}: command failed with exit status " \
           f"{status}{said}"
    return RecipientResult(550, text, RELAY, diagnostic_type="x-unix", detail=line or text)
