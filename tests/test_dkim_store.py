"""DKIM keys on the SQL layer (both engines) and signing at queue time: real queue files,
every signature checked by dkimpy's verifier against the record the store says to publish."""

from __future__ import annotations

import base64
import errno
import hashlib
from pathlib import Path

import pytest

from tests.dkim_helpers import signature_tags, verifies
from tmail import config as tmail_config
from tmail.db import Database
from tmail.directory.domains import DomainStore
from tmail.directory.errors import Conflict, InvalidEntry
from tmail.directory.lookup import Directory
from tmail.directory.relayips import RelayNetworkStore
from tmail.dkim.keys import KeyStore, NoSuchDomain
from tmail.dkim.signing import DkimSigner, from_domain
from tmail.queue import QueueStore, QueueWriteError

DOMAIN = "signed.example"
MESSAGE = (b"From: Alice <alice@signed.example>\r\nTo: bob@elsewhere.example\r\n"
           b"Cc: carol@elsewhere.example\r\nSubject: quarterly figures\r\n"
           b"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@signed.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"X-Mailer: not signed\r\n\r\nThe figures  are\t fine.\r\n\r\n\r\n")


@pytest.fixture
def keys(database: Database) -> KeyStore:
    DomainStore(database).create(DOMAIN, local=True)
    return KeyStore(database)


def queue(tmp_path: Path, database: Database, **env: str) -> QueueStore:
    config = tmail_config.load({"TMAIL_DATA_DIR": str(tmp_path), **env})
    return QueueStore(tmp_path / "queue", signer=DkimSigner(database, Directory(database,
                                                                                config)))


def published(keys: KeyStore) -> list[tuple[str, str]]:
    return [(key.dns_name, key.dns_value) for key in keys.list()]


def test_a_new_key_is_rsa_2048_with_a_dated_selector_and_a_split_txt_record(
        keys: KeyStore) -> None:
    key = keys.create(DOMAIN)
    assert key.algorithm == "rsa-sha256" and key.active
    assert key.selector == key.created_at.strftime("tmail%Y%m")
    assert key.dns_name == f"{key.selector}._domainkey.{DOMAIN}"
    strings = key.dns_value.split('" "')
    assert len(strings) == 2 and key.dns_value.startswith('"v=DKIM1; k=rsa; p=')
    assert all(len(part.strip('"').encode()) <= 255 for part in strings)
    # 2048 bits: a 294-byte SubjectPublicKeyInfo
    assert len(base64.b64decode(key.public_key)) == 294


def test_an_ed25519_record_carries_the_raw_32_byte_public_key(keys: KeyStore) -> None:
    key = keys.create(DOMAIN, "ed25519", "ed1")
    assert key.algorithm == "ed25519-sha256"
    assert key.dns_value == f"v=DKIM1; k=ed25519; p={key.public_key}"
    assert len(base64.b64decode(key.public_key)) == 32


@pytest.mark.parametrize(("domain", "algorithm", "selector", "error"), [
    ("not-local.example", "rsa", None, NoSuchDomain),
    ("bad..domain", "rsa", None, InvalidEntry),
    (DOMAIN, "dsa", None, InvalidEntry),
    (DOMAIN, "rsa", "bad_selector", InvalidEntry),
    (DOMAIN, "rsa", "-dash", InvalidEntry),
    (DOMAIN, "rsa", "x" * 64, InvalidEntry),
])
def test_a_key_needs_a_local_domain_a_known_algorithm_and_a_dns_selector(
        keys: KeyStore, domain: str, algorithm: str, selector: str | None,
        error: type[Exception]) -> None:
    with pytest.raises(error):
        keys.create(domain, algorithm, selector)
    assert keys.list() == []


def test_a_taken_selector_is_a_conflict_and_a_second_dated_one_gets_the_day(
        keys: KeyStore) -> None:
    first = keys.create(DOMAIN, "ed25519")
    second = keys.create(DOMAIN, "ed25519")
    assert second.selector == second.created_at.strftime("tmail%Y%m%d")
    with pytest.raises(Conflict):
        keys.create(DOMAIN, "ed25519", first.selector.upper())
    assert [k.selector for k in keys.list()] == [second.selector, first.selector]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("submitter", [{"auth_user": "alice@signed.example"},
                                       {"client_addr": "local"},
                                       {"client_addr": "192.0.2.10"}],
                         ids=["authenticated", "sendmail", "relay-network"])
def test_mail_from_a_trusted_submitter_is_signed_for_its_from_domain(
        tmp_path: Path, database: Database, keys: KeyStore, algorithm: str,
        submitter: dict[str, str]) -> None:
    key = keys.create(DOMAIN, algorithm, "s1")
    store = queue(tmp_path, database, TMAIL_RELAY_NETWORKS="192.0.2.0/24")
    [record] = store.enqueue(MESSAGE, "alice@signed.example", ["bob@elsewhere.example"],
                             **submitter)
    raw = store.read_raw(record.id)
    assert raw is not None and raw.endswith(MESSAGE)
    assert verifies(raw, published(keys))
    tags = signature_tags(raw)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == (DOMAIN, "s1", key.algorithm,
                                                            "relaxed/relaxed")
    assert tags["h"].split(":") == ["from", "to", "cc", "subject", "date", "message-id",
                                    "mime-version", "content-type", "from"]
    assert (record.key, record.size) == (hashlib.sha1(raw).hexdigest(), len(raw))
    assert list(store.layout.tmp.iterdir()) == []  # the unsigned spool is gone
    tampered = raw.replace(b"are\t fine", b"are bad")
    assert not verifies(tampered, published(keys))


def test_a_stored_relay_network_counts_as_trusted(tmp_path: Path, database: Database,
                                                  keys: KeyStore) -> None:
    keys.create(DOMAIN, "ed25519")
    RelayNetworkStore(database).create("2001:db8::/32")
    store = queue(tmp_path, database)
    [record] = store.enqueue(MESSAGE, "", ["bob@elsewhere.example"], client_addr="2001:db8::5")
    assert verifies(store.read_raw(record.id) or b"", published(keys))


@pytest.mark.parametrize(("message", "submitter"), [
    (MESSAGE, {"client_addr": "203.0.113.9"}),
    (MESSAGE.replace(b"@signed.example>", b"@unsigned.example>"), {"auth_user": "a@b.example"}),
    (b"From: a@signed.example\r\nFrom: b@signed.example\r\n\r\ntwo\r\n", {"client_addr": "local"}),
    (b"From: a@signed.example, b@other.example\r\n\r\ntwo\r\n", {"client_addr": "local"}),
    (b"Subject: no From\r\n\r\nbody\r\n", {"client_addr": "local"}),
    (b"From: a@signed.example\r\nnot a header line\r\n\r\nbody\r\n", {"client_addr": "local"}),
], ids=["untrusted-client", "domain-without-key", "two-from-fields", "two-from-domains",
        "no-from", "header-dkimpy-cannot-parse"])
def test_other_mail_is_queued_as_it_came(tmp_path: Path, database: Database, keys: KeyStore,
                                         message: bytes, submitter: dict[str, str]) -> None:
    keys.create(DOMAIN, "ed25519")
    store = queue(tmp_path, database)
    [record] = store.enqueue(message, "", ["bob@elsewhere.example"], **submitter)
    assert store.read_raw(record.id) == message
    assert record.key == hashlib.sha1(message).hexdigest()


def test_rotation_signs_with_the_newest_key_and_delete_stops_signing(
        tmp_path: Path, database: Database, keys: KeyStore) -> None:
    keys.create(DOMAIN, "rsa", "old")
    keys.create(DOMAIN, "ed25519", "new")
    assert [(k.selector, k.active) for k in keys.list()] == [("new", True), ("old", False)]
    store = queue(tmp_path, database)
    [record] = store.enqueue(MESSAGE, "", ["b@elsewhere.example"], client_addr="local")
    assert signature_tags(store.read_raw(record.id) or b"")["s"] == "new"
    assert keys.delete(DOMAIN) == 2 and keys.get(DOMAIN) is None
    [record] = store.enqueue(MESSAGE, "", ["b@elsewhere.example"], client_addr="local")
    assert store.read_raw(record.id) == MESSAGE


def test_a_signer_remembers_keys_only_until_the_next_directory_change(
        tmp_path: Path, database: Database, keys: KeyStore) -> None:
    """The signer caches each domain's key (or its absence) by directory generation: a key
    made by any node (another KeyStore on the same database) signs the very next message."""
    store = queue(tmp_path, database)
    [record] = store.enqueue(MESSAGE, "", ["b@elsewhere.example"], client_addr="local")
    assert store.read_raw(record.id) == MESSAGE  # no key yet: remembered as none
    KeyStore(database).create(DOMAIN, "ed25519", "fresh")
    [record] = store.enqueue(MESSAGE, "", ["b@elsewhere.example"], client_addr="local")
    assert signature_tags(store.read_raw(record.id) or b"")["s"] == "fresh"


def test_a_database_that_cannot_answer_fails_the_message_for_a_retry(tmp_path: Path) -> None:
    (tmp_path / "users.db").mkdir()  # what SQLite cannot open (a missing file it would make)
    missing = Database(f"sqlite:///{tmp_path / 'users.db'}")
    config = tmail_config.load({"TMAIL_DATA_DIR": str(tmp_path)})
    store = QueueStore(tmp_path / "queue", signer=DkimSigner(missing, Directory(missing, config)))
    with pytest.raises(QueueWriteError) as failed:
        store.enqueue(MESSAGE, "", ["b@elsewhere.example"], client_addr="192.0.2.1")
    assert failed.value.errno == errno.EAGAIN
    assert list(store.iter_records()) == [] and list(store.layout.tmp.iterdir()) == []


@pytest.mark.parametrize(("headers", "domain"), [
    (b"From: =?utf-8?q?J=C3=B6rg?= <j@B\xc3\xbccher.example>\r\n", "xn--bcher-kva.example"),
    (b"from:\r\n  Someone <s@Signed.Example>\r\n", DOMAIN),
    (b"From: undisclosed\r\n", None),
    (b"From: a@[192.0.2.1]\r\n", None),
])
def test_the_from_domain_is_the_one_domain_of_the_from_field(headers: bytes,
                                                              domain: str | None) -> None:
    assert from_domain(headers) == domain
