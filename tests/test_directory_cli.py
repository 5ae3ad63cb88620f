"""``python -m tmail domains|aliases|relayips|routes list|add|del`` as an admin runs them
(real subprocesses on a temp data dir), and a change made there counts at the next RCPT."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, stop, tmail_env
from tests.smtp_helpers import Receiver, start_receiver


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tmail_env(tmp_path_factory.mktemp("cli"))


def tmail(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmail", *args], cwd=REPO, env=env, text=True,
                          input=stdin, capture_output=True, timeout=60, check=False)


def listing(env: dict[str, str], what: str) -> list[dict]:  # type: ignore[type-arg]
    done = tmail(env, what, "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_domains_add_list_del(env: dict[str, str]) -> None:
    assert tmail(env, "domains", "add", "CLI.Example").returncode == 0
    assert tmail(env, "domains", "add", "backup.example", "--relay").returncode == 0
    assert {(d["Name"], d["Local"]) for d in listing(env, "domains")} >= {
        ("cli.example", True), ("backup.example", False)}
    bad = tmail(env, "domains", "add", "not_a_domain")
    assert bad.returncode == 65 and "domain:" in bad.stderr
    again = tmail(env, "domains", "add", "cli.example")
    assert again.returncode == 1 and "domain exists" in again.stderr
    assert tmail(env, "domains", "del", "backup.example").returncode == 0
    assert tmail(env, "domains", "del", "backup.example").returncode == 1
    assert "backup.example" not in tmail(env, "domains", "list").stdout


def test_aliases_add_list_del(env: dict[str, str]) -> None:
    tmail(env, "domains", "add", "aliases.example")
    done = tmail(env, "aliases", "add", "team@aliases.example", "a@x.example", "b@y.example",
                 "--pipe", "/usr/bin/logger -t team", "--mini-list")
    assert done.returncode == 0, done.stderr
    [alias] = [a for a in listing(env, "aliases") if a["Address"] == "team@aliases.example"]
    assert (alias["DeliverTo"], alias["Pipe"], alias["MiniList"]) == (
        ["a@x.example", "b@y.example"], "/usr/bin/logger -t team", True)
    assert "|/usr/bin/logger -t team" in tmail(env, "aliases", "list").stdout
    refused = tmail(env, "aliases", "add", "x@elsewhere.example", "a@x.example")
    assert refused.returncode == 65 and "is not a local domain" in refused.stderr
    empty = tmail(env, "aliases", "add", "y@aliases.example")
    assert empty.returncode == 65 and "at least one of deliverTo and pipe" in empty.stderr
    assert tmail(env, "aliases", "del", "TEAM@aliases.example").returncode == 0
    assert tmail(env, "aliases", "del", "team@aliases.example").returncode == 1


def test_relayips_add_list_del(env: dict[str, str]) -> None:
    assert tmail(env, "relayips", "add", "2001:DB8::/32").returncode == 0
    [entry] = [n for n in listing(env, "relayips") if n["Network"] == "2001:db8::/32"]
    bad = tmail(env, "relayips", "add", "10.0.0.1/8")
    assert bad.returncode == 65 and "host bits set" in bad.stderr
    assert tmail(env, "relayips", "del", str(entry["Id"])).returncode == 0
    assert tmail(env, "relayips", "del", str(entry["Id"])).returncode == 1


def test_routes_add_list_del_and_the_password_stays_unseen(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    secret = "cli-secret-password"
    done = tmail({**env, "TMAIL_ROUTES": "boot.example=127.0.0.1:2600"}, "routes", "add",
                 "example.net", "smtp.relay.example", "--port", "587", "--priority", "5",
                 "--starttls", "encrypt", "--auth-login", "me", "--auth-password-file", "-",
                 stdin=secret + "\n")
    assert done.returncode == 0, done.stderr
    env_routes = {**env, "TMAIL_ROUTES": "boot.example=127.0.0.1:2600"}
    routes = listing(env_routes, "routes")
    [stored] = [r for r in routes if r["Host"] == "example.net"]
    assert (stored["RemotePort"], stored["Priority"], stored["AuthLogin"],
            stored["Bootstrap"]) == (587, 5, "me", False)
    [boot] = [r for r in routes if r["Host"] == "boot.example"]
    assert (boot["Id"], boot["Bootstrap"], boot["RemotePort"]) == (None, True, 2600)
    shown = tmail(env_routes, "routes", "list")
    assert "   env boot.example -> 127.0.0.1:2600" in shown.stdout
    assert all(secret not in text for text in (shown.stdout, json.dumps(routes),
                                                done.stdout, done.stderr))
    missing = tmail(env, "routes", "add", "example.net", "x.example", "--auth-login", "me")
    assert missing.returncode == 65 and "authLogin and authPassword go together" in (
        missing.stderr)
    assert tmail(env, "routes", "del", str(stored["Id"])).returncode == 0
    assert tmail(env, "routes", "del", str(stored["Id"])).returncode == 1


@pytest.fixture(scope="module")
def receiver(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Receiver]:
    tmail(env, "domains", "list")  # the schema exists before the receiver starts
    server = start_receiver(env, tmp_path_factory.mktemp("cli-smtp") / "receiver.log")
    yield server
    stop(server.process)


def test_an_alias_added_with_the_cli_counts_at_the_next_rcpt(env: dict[str, str],
                                                             receiver: Receiver) -> None:
    with receiver.raw() as client:
        client.command(b"EHLO client.test")
        client.command(b"MAIL FROM:<s@sender.example>")
        assert client.command(b"RCPT TO:<info@next.example>").startswith(b"554 5.7.1")
        assert tmail(env, "domains", "add", "next.example").returncode == 0
        assert client.command(b"RCPT TO:<info@next.example>").startswith(b"550 5.1.1")
        assert tmail(env, "aliases", "add", "info@next.example", "x@remote.example"
                     ).returncode == 0
        assert client.command(b"RCPT TO:<info@next.example>").startswith(b"250")


def test_sendmail_expands_aliases_as_the_receiver_does(env: dict[str, str]) -> None:
    from tmail import config as tmail_config
    from tmail.queue import QueueStore

    assert tmail(env, "domains", "add", "cron.example").returncode == 0
    assert tmail(env, "aliases", "add", "root@cron.example", "ops@remote.example",
                 "--pipe", "/usr/bin/logger -t cron").returncode == 0
    done = subprocess.run([sys.executable, "-m", "tmail", "sendmail", "Root@cron.example"],
                          cwd=REPO, env=env, input=b"Subject: cron\n\nok\n", capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    store = QueueStore(tmail_config.load(env).queue_dir)
    records = [r for r in store.iter_records() if r.orig_rcpt == "Root@cron.example"]
    assert sorted((r.rcpt_to, r.transport) for r in records) == [
        ("Root@cron.example", "pipe"), ("ops@remote.example", "")]
