"""Load-generation and reference helpers shared by the MTA benchmarks.

Postfix's own test programs drive the load: ``smtp-source`` is a C client that costs far
less CPU than a Python one, so on a 2-core machine it leaves more of the machine to the
server being measured, and it measures Postfix and tmail alike. ``smtp-sink`` is the
far end of a relay test. ``disk_limit`` gives the disk's own ceiling for durable
one-file-per-message writes, so that every MTA figure can be read as a ratio to it.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = Path("/usr/sbin/smtp-source")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
POSTFIX = Path("/usr/sbin/postfix")


def ensure_postfix_installed() -> None:
    """Install the Debian postfix package (which ships smtp-source/smtp-sink) if missing.

    The project's own script does it, so that a fresh machine needs no manual step.
    """
    if POSTFIX.exists() and SMTP_SOURCE.exists() and SMTP_SINK.exists():
        return
    subprocess.run(["sh", str(REPO / "scripts" / "apt-ensure"), "postfix"], check=True,
                   timeout=900)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the kernel picks it, so runs never clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:port.

    A server that forks or drops privileges after binding may not be ready when its start
    command returns; sending load before that would count refused connections as failures.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def run_smtp_source(port: int, messages: int, sessions: int, size: int = 4096,
                    rcpt: str = "user@bench.test", sender: str = "from@bench.test",
                    *, keep_connection: bool = True, timeout: float = 300.0) -> float:
    """Send ``messages`` messages of ``size`` payload bytes over ``sessions`` parallel SMTP
    sessions to 127.0.0.1:port; return the elapsed seconds.

    ``keep_connection`` (smtp-source -d) sends each session's messages over one connection,
    as tmail's Python benchmarks do; without it every message opens a new connection,
    which measures connection set-up as much as message acceptance. -c (a counter on
    stdout) is left out: it would print a line per message. smtp-source exits non-zero
    on any reply it does not expect, so a run that returns has had every message accepted.
    """
    ensure_postfix_installed()
    argv = [str(SMTP_SOURCE), "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", rcpt]
    if keep_connection:
        argv.append("-d")
    argv.append(f"127.0.0.1:{port}")
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited with {done.returncode}: "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return elapsed


def _dump_parent() -> str | None:
    """tmpfs for the sink's capture files when there is one: the sink's own writes then
    never compete with the fsyncs of the MTA under test for the disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SmtpSink:
    """``smtp-sink`` on a free loopback port, counting the messages it has received.

    Counting: smtp-sink's -c counter rewrites a stdout line per message, so instead each
    transaction is captured (-d) to its own file in a private directory on tmpfs. The sink
    keeps a capture file open while the transaction runs, so a file counts as received
    only once no descriptor of the sink points at it any more (read from /proc): the count
    never includes a message still in transit.
    """

    def __init__(self, backlog: int = 256) -> None:
        self.backlog = backlog
        self.port = 0
        self.dump_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Path | None = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start the sink and return once it accepts connections."""
        ensure_postfix_installed()
        base = Path(tempfile.mkdtemp(prefix="tmail-sink-", dir=_dump_parent()))
        base.chmod(0o755)  # mkdtemp's 0700 would keep the sink's user out
        self.dump_dir = base / "msgs"
        self.dump_dir.mkdir()
        self._stderr = base / "stderr"
        argv = [str(SMTP_SINK)]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root; the capture directory must be its user's.
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dump_dir, nobody.pw_uid, nobody.pw_gid)
            argv += ["-u", "nobody"]
        self.port = free_port()
        # The template ends in "/": each file is named by the sink's random number alone.
        argv += ["-d", f"{self.dump_dir}/", f"127.0.0.1:{self.port}", str(self.backlog)]
        with self._stderr.open("wb") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_listening(self.port, proc=self._proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the sink (it has no state worth a graceful stop) and drop its captures."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir.parent, ignore_errors=True)
            self.dump_dir = None

    def _open_files(self) -> set[str]:
        """Names of capture files the sink still holds open (transactions in progress)."""
        assert self._proc is not None
        fd_dir = f"/proc/{self._proc.pid}/fd"
        prefix = f"{self.dump_dir}/"
        names = set()
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:  # closed between listdir and readlink
                continue
            if target.startswith(prefix):
                names.add(target[len(prefix):])
        return names

    def _completed(self) -> list[str]:
        # The listing comes first: a file that closes in between is complete by then, and one
        # created after the listing is not in it, so the result never overcounts.
        assert self.dump_dir is not None
        names = os.listdir(self.dump_dir)
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"smtp-sink is not running: {self.stderr()}")
        busy = self._open_files()
        return [name for name in names if name not in busy]

    def received(self) -> int:
        """Messages whose transaction has ended (the sink's 250 for the final dot)."""
        return len(self._completed())

    def stderr(self) -> str:
        """What the sink printed on stderr, for error messages."""
        if self._stderr is None or not self._stderr.exists():
            return ""
        return self._stderr.read_text(errors="replace").strip()

    def wait_for(self, count: int, timeout: float = 120.0, poll: float = 0.01) -> float:
        """Wait until ``count`` messages have been received; return the time.perf_counter()
        at which the count-th arrived.

        The arrival time is read from the capture files' modification times, so it does not
        depend on the polling interval (each file's last write is its final dot).
        """
        assert self.dump_dir is not None
        deadline = time.monotonic() + timeout
        while True:
            names = self._completed()
            if len(names) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink received {len(names)} of {count} messages"
                                   f" in {timeout:.0f} s")
            time.sleep(poll)
        mtimes = sorted(os.stat(self.dump_dir / name).st_mtime for name in names)
        perf_now, wall_now = time.perf_counter(), time.time()
        return min(perf_now, perf_now - (wall_now - mtimes[count - 1]))


def create_cost(directory: Path, files: int = 500) -> float:
    """Seconds per empty file created in a fresh temp dir under ``directory``.

    On this machine's ext4 (no journal), creating a file is cheap (50-100 us) or not
    (0.7-1.5 ms of kernel time, measured 2026-12-02), depending on how many inodes of the
    directory's block group were freed in the last minute or so: the allocator skips each
    recently freed one. A queue creates a file or two per message, so the benchmark's
    header says what a file cost where it ran, before the run.
    """
    root = Path(tempfile.mkdtemp(prefix="create-cost-", dir=directory))
    try:
        started = time.perf_counter()
        for n in range(files):
            os.close(os.open(root / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        return (time.perf_counter() - started) / files
    finally:
        shutil.rmtree(root, ignore_errors=True)


def disk_limit(directory: Path, messages: int, size: int = 4096) -> float:
    """Messages/s the disk allows for durable one-file-per-message writes.

    Per message: write ``size`` bytes to a temp name, fsync it, rename it into place, fsync
    the directory: the least a queue must do before answering 250. It runs in a fresh
    temp dir under ``directory``, which should be on the filesystem of the queues measured.
    """
    root = Path(tempfile.mkdtemp(prefix="disk-limit-", dir=directory))
    payload = b"x" * size
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        for n in range(messages):
            tmp = root / f".{n}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, root / str(n))
            os.fsync(dir_fd)
        return messages / (time.perf_counter() - started)
    finally:
        os.close(dir_fd)
        shutil.rmtree(root, ignore_errors=True)
