"""Postfix on this machine, as the yardstick for tmail's SMTP figures.

    .venv/bin/python -m bench.postfix [--messages 1000] [--rounds 3] [--new-connections]
                                      [--dir DIR]

Runs private Postfix instances (own config, spool and log under a temp dir, smtpd on a
free 127.0.0.1 port; /etc/postfix is only read) and prints messages/s for: accepting
4 KiB messages with delivery discarded (1, 5, 20 sessions), relaying them to a loopback
smtp-sink, delivering them to a Maildir with the virtual agent, and the disk's own limit
for fsync'd one-file-per-message writes on the same filesystem. Load comes from Postfix's
smtp-source. Traffic: 127.0.0.1 only. Needs root (Postfix's master runs as root).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from bench.smtp_tools import (
    POSTFIX,
    SmtpSink,
    disk_limit,
    ensure_postfix_installed,
    free_port,
    run_smtp_source,
    wait_listening,
)

MODES = ("discard", "relay", "virtual")
DOMAIN = "bench.test"
VIRTUAL_USER = "user"
RCPT = f"{VIRTUAL_USER}@{DOMAIN}"
# Queues that hold a message until it is delivered (bounce/defer/trace hold logs, not mail).
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Program names (as in /proc/PID/stat) of the processes that an instance runs.
POSTFIX_PROGRAMS = frozenset({
    "master", "pickup", "cleanup", "qmgr", "trivial-rewrite", "bounce", "verify", "flush",
    "proxymap", "smtp", "smtpd", "showq", "error", "discard", "local", "virtual", "anvil",
    "scache", "postlogd",
})
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

# Every service is unchained (chroot column "n"): a chroot would need copies of /etc files
# in the spool, and Postfix's default on Debian is a packaging choice, not a speed one.
# The smtpd line is written per instance with its loopback port.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PrivatePostfix:
    """A Postfix instance of its own under ``workdir``, started and stopped as a context.

    ``mode`` picks what happens to accepted mail: ``discard`` (the discard transport: pure
    acceptance, with Postfix's usual fsync of the queue file before 250), ``relay`` (SMTP
    to 127.0.0.1:``relay_port``) or ``virtual`` (Maildir under ``workdir/vmail`` via the
    virtual agent). Settings that are not named here keep Postfix 3.7's defaults.
    """

    def __init__(self, workdir: Path, mode: str, relay_port: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if (mode == "relay") != (relay_port is not None):
            raise ValueError("relay_port goes with mode 'relay', and only with it")
        self.workdir = Path(workdir).resolve()
        self.mode = mode
        self.relay_port = relay_port
        self.port = 0
        self.config_dir = self.workdir / "etc"
        self.spool = self.workdir / "spool"
        self.vmail = self.workdir / "vmail"
        self.maillog = self.workdir / "maillog"

    def __enter__(self) -> PrivatePostfix:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- configuration -------------------------------------------------------------

    def main_cf(self) -> str:
        """main.cf for this instance: loopback only, no TLS, no local aliases, and one
        transport per mode; everything else is Postfix 3.7's default."""
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.spool}",
            f"data_directory = {self.workdir / 'data'}",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {self.workdir}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"myhostname = {DOMAIN}",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
            "smtpd_tls_security_level = none",
            "smtp_tls_security_level = none",
            # 20 parallel sessions need 20 smtpd (and as many cleanup) processes.
            "default_process_limit = 100",
            "smtpd_client_connection_rate_limit = 0",
        ]
        if self.mode == "discard":
            lines += ["default_transport = discard", "relay_transport = discard"]
        elif self.mode == "relay":
            lines += ["default_transport = smtp", "relay_transport = smtp",
                      f"relayhost = [127.0.0.1]:{self.relay_port}"]
        else:
            nobody = pwd.getpwnam("nobody")
            lines += [
                f"virtual_mailbox_domains = {DOMAIN}",
                f"virtual_mailbox_base = {self.vmail}",
                f"virtual_mailbox_maps = texthash:{self.config_dir / 'vmailbox'}",
                f"virtual_uid_maps = static:{nobody.pw_uid}",
                f"virtual_gid_maps = static:{nobody.pw_gid}",
                # Nothing else is ever delivered here; keep strays off the network.
                "default_transport = discard",
                "relay_transport = discard",
            ]
        return "\n".join(lines) + "\n"

    def master_cf(self) -> str:
        """master.cf: the usual services, unchained, plus smtpd on our loopback port."""
        smtpd = f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
        return MASTER_CF + smtpd

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Postfix daemons and the virtual agent run unprivileged and walk these paths.
        self.workdir.chmod(0o755)
        for parent in self.workdir.parents:
            if not parent.stat().st_mode & 0o001:
                raise PermissionError(f"{parent} is not searchable by others; Postfix's"
                                      " unprivileged daemons could not reach the spool")
        self.config_dir.mkdir(exist_ok=True)
        self.spool.mkdir(mode=0o755, exist_ok=True)  # postfix start creates the rest
        self.port = free_port()
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        if self.mode == "virtual":
            # A trailing slash selects Maildir delivery.
            (self.config_dir / "vmailbox").write_text(f"{RCPT} {DOMAIN}/{VIRTUAL_USER}/\n")
            self.vmail.mkdir(exist_ok=True)
            nobody = pwd.getpwnam("nobody")
            os.chown(self.vmail, nobody.pw_uid, nobody.pw_gid)

    # -- life cycle ----------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def _log_tail(self, lines: int = 20) -> str:
        if not self.maillog.exists():
            return "(no maillog)"
        return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> None:
        """Write the configuration, start the instance, wait for its smtpd port."""
        if os.geteuid() != 0:
            raise PermissionError("a private Postfix instance needs root (its master does)")
        ensure_postfix_installed()
        self._write_config()
        _become_subreaper()
        done = self._postfix("start")
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"postfix start failed ({done.returncode}): {done.stderr}"
                               f"{done.stdout}\n{self._log_tail()}")
        try:
            wait_listening(self.port, timeout=15)
        except BaseException:
            self.stop()
            raise

    def instance_pids(self) -> list[int]:
        """Processes of this instance: all carry MAIL_CONFIG=<our etc> in their environment
        (master passes it on through import_environment), which nothing else has."""
        marker = b"MAIL_CONFIG=" + os.fsencode(str(self.config_dir))
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry))
        return pids

    def _wait_gone(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while (pids := self.instance_pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def stop(self) -> None:
        """``postfix stop``, then ``abort``, then SIGKILL to whatever of ours is left."""
        if not self.config_dir.exists():
            return
        if self._postfix("stop").returncode != 0 or self._wait_gone(5):
            self._postfix("abort")
        for pid in self._wait_gone(3):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left := self._wait_gone(5):
            raise RuntimeError(f"Postfix processes survived stop: {left}")
        _reap_postfix_zombies()

    # -- observation ---------------------------------------------------------------

    def queued(self) -> int:
        """Messages not yet delivered (queue files in the spool's mail queues)."""
        total = 0
        for queue in QUEUES:
            for _root, _dirs, files in os.walk(self.spool / queue):
                total += len(files)
        return total

    def queue_empty(self) -> bool:
        """True when every accepted message has left the queue (delivered or discarded)."""
        return self.queued() == 0

    def wait_queue_empty(self, timeout: float = 120.0) -> float:
        """Wait for an empty queue; return the time.perf_counter() when it was seen empty."""
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.queued()} messages still queued after {timeout} s;"
                                   f" log:\n{self._log_tail()}")
            time.sleep(0.01)
        return time.perf_counter()

    def maildir_count(self) -> int:
        """Messages delivered to the virtual user's Maildir (new/), for mode 'virtual'."""
        new = self.vmail / DOMAIN / VIRTUAL_USER / "new"
        try:
            return len(os.listdir(new))
        except FileNotFoundError:
            return 0

    def wait_maildir(self, count: int, timeout: float = 120.0) -> float:
        """Wait until ``count`` messages are in the Maildir; return time.perf_counter()."""
        deadline = time.monotonic() + timeout
        while (have := self.maildir_count()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{have} of {count} messages in the Maildir after"
                                   f" {timeout} s; log:\n{self._log_tail()}")
            time.sleep(0.01)
        return time.perf_counter()


def _become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants.

    ``postfix start`` daemonises the master, and the master leaves its children behind
    when it exits; as orphans of PID 1 they stay zombies until init gets round to them
    (seconds here), which looks like processes surviving the benchmark. As orphans of
    this process they are reaped by ``stop()`` at once. Best effort: Linux only.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_postfix_zombies() -> None:
    """Reap exited Postfix programs that were handed to this process (see above); only
    those, so that no subprocess.Popen of the caller loses its exit status."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        state, ppid = stat[stat.rfind(")") + 2:].split()[:2]
        if state == "Z" and int(ppid) == me and comm in POSTFIX_PROGRAMS:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)


def _warm_up(port: int, sessions: int, keep_connection: bool) -> int:
    """Send one message per session before timing, so that Postfix has forked its smtpd,
    cleanup and delivery processes: the figures then describe a running server, not its
    start-up. Returns the number of messages sent."""
    run_smtp_source(port, sessions, sessions, rcpt=RCPT, keep_connection=keep_connection)
    return sessions


def accept_rates(workdir: Path, messages: int, levels: tuple[int, ...], *,
                 keep_connection: bool = True) -> dict[int, float]:
    """Messages/s that Postfix accepts (250 after its fsync) with delivery discarded, at each
    session count, on one instance (warmed up before each count)."""
    rates = {}
    with PrivatePostfix(workdir, "discard") as postfix:
        for sessions in levels:
            _warm_up(postfix.port, sessions, keep_connection)
            postfix.wait_queue_empty()
            elapsed = run_smtp_source(postfix.port, messages, sessions, rcpt=RCPT,
                                      keep_connection=keep_connection)
            postfix.wait_queue_empty()
            rates[sessions] = messages / elapsed
    return rates


def relay_rates(workdir: Path, messages: int, levels: tuple[int, ...], *,
                keep_connection: bool = True,
                pickup: Callable[[int, SmtpSink, int], list[float]] | None = None,
                ) -> tuple[dict[int, float], list[float]]:
    """End-to-end messages/s through Postfix to a loopback smtp-sink at each session count,
    on one instance: from the start of the sending until the sink has received the last
    message. Then ``pickup(port, sink, received)`` (row 5) on the same instance, if given."""
    rates, sent = {}, 0
    with SmtpSink() as sink, PrivatePostfix(workdir, "relay", sink.port) as postfix:
        for sessions in levels:
            sent += _warm_up(postfix.port, sessions, keep_connection)
            sink.wait_for(sent)
            postfix.wait_queue_empty()
            started = time.perf_counter()
            run_smtp_source(postfix.port, messages, sessions, rcpt=RCPT,
                            keep_connection=keep_connection)
            sent += messages
            finished = sink.wait_for(sent)
            postfix.wait_queue_empty()
            rates[sessions] = messages / (finished - started)
        latencies = pickup(postfix.port, sink, sent) if pickup else []
    return rates, latencies


def virtual_rate(workdir: Path, messages: int, sessions: int = 20, *,
                keep_connection: bool = True) -> float:
    """End-to-end messages/s from the start of the sending until all are in the Maildir."""
    with PrivatePostfix(workdir, "virtual") as postfix:
        warm = _warm_up(postfix.port, sessions, keep_connection)
        postfix.wait_maildir(warm)
        postfix.wait_queue_empty()
        started = time.perf_counter()
        run_smtp_source(postfix.port, messages, sessions, rcpt=RCPT,
                                  keep_connection=keep_connection)
        finished = postfix.wait_maildir(warm + messages)
        postfix.wait_queue_empty()
    return messages / (finished - started)


def _one_round(base: Path, args: argparse.Namespace) -> dict[str, float]:
    keep = not args.new_connections
    rates = {DISK: disk_limit(base, args.disk_messages)}
    levels = tuple(args.sessions)
    for sessions, rate in accept_rates(base / "accept", args.messages, levels,
                                       keep_connection=keep).items():
        rates[f"accept (discard), {sessions} sessions"] = rate
    relay, _ = relay_rates(base / "relay", args.relay_messages, (20,), keep_connection=keep)
    rates["relay to smtp-sink, 20 sessions"] = relay[20]
    rates["virtual to Maildir, 20 sessions"] = virtual_rate(
        base / "virtual", args.virtual_messages, 20, keep_connection=keep)
    return rates


DISK = "disk: write+fsync+rename+dir fsync"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="per accept level")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--relay-messages", type=int, default=1000)
    parser.add_argument("--virtual-messages", type=int, default=1000)
    parser.add_argument("--disk-messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="the table shows medians")
    parser.add_argument("--new-connections", action="store_true",
                        help="one SMTP connection per message (smtp-source without -d)")
    parser.add_argument("--dir", default=None, help="where the work dir goes (the disk measured)")
    args = parser.parse_args()

    ensure_postfix_installed()
    load_before = os.getloadavg()[0]
    results: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        base = Path(tempfile.mkdtemp(prefix="tmail-postfix-", dir=args.dir))
        base.chmod(0o755)  # mkdtemp's 0700 would lock Postfix's unprivileged daemons out
        try:
            for name, rate in _one_round(base, args).items():
                results.setdefault(name, []).append(rate)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    connection = "a new connection per message" if args.new_connections else "-d"
    print(f"Postfix {_postfix_version()}, 4 KiB messages, smtp-source {connection},"
          f" {os.cpu_count()} cores, work dir under {args.dir or tempfile.gettempdir()};"
          f" median of {args.rounds} rounds")
    # Other work on the machine moves these figures a lot; the load average tells if it ran.
    print(f"load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    disk = statistics.median(results[DISK])
    print(f"{'figure':40} {'msg/s':>7} {'min':>6} {'max':>6} {'vs disk':>8}")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"{name:40} {median:7.0f} {min(rates):6.0f} {max(rates):6.0f}"
              f" {median / disk:7.2f}x")
    return 0


def _postfix_version() -> str:
    done = subprocess.run(["/usr/sbin/postconf", "-dh", "mail_version"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
