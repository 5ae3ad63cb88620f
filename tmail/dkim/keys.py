"""DKIM keys: one table, several selectors per domain (rotation), the newest one signs.

A key is made here with ``cryptography`` (RSA 2048, or Ed25519 as RFC 8463 defines it) and
stored with its domain's A-label. The private half is kept as dkimpy reads it (RSA: a PKCS#8
PEM; Ed25519: the base64 32-byte seed) and only :meth:`KeyStore.signing_key` returns it:
every other reader gets a :class:`DkimKey`, which has no field for it, so that no API
response, CLI output or log line can carry it by mistake.

Rotation is a new key with a new selector: signing moves to it at once, the older keys stay
listed (their DNS records must stay published until mail signed with them is delivered)
until the domain's keys are deleted, which stops signing for that domain.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc

from tmail.db import Database, bump_generation, metadata
from tmail.directory.domains import normalize_domain
from tmail.directory.errors import Conflict, DirectoryError, InvalidEntry
from tmail.directory.local import is_local_domain

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
# What a client asks for (the DNS record's k= tag) -> the signature's a= tag.
ALGORITHMS = {"rsa": RSA, "ed25519": ED25519}
RSA_BITS = 2048
TXT_STRING = 255  # octets in one <character-string> of a TXT record (RFC 1035 3.3)

dkim_keys = Table(
    "dkim_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("domain", Text, nullable=False),  # lower-case A-label
    Column("selector", Text, nullable=False),  # lower case
    Column("algorithm", Text, nullable=False),  # rsa-sha256 | ed25519-sha256
    Column("private_key", Text, nullable=False),  # PKCS#8 PEM (RSA), base64 seed (Ed25519)
    Column("public_key", Text, nullable=False),  # base64, the record's p= value
    Column("created_at", BigInteger, nullable=False),  # Unix seconds
    UniqueConstraint("domain", "selector"),
    Index("dkim_keys_domain", "domain"),
)

_SELECTOR_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # stored in lower case
SELECTOR_PATTERN = rf"^{_SELECTOR_LABEL}(?:\.{_SELECTOR_LABEL})*$"
SELECTOR = re.compile(SELECTOR_PATTERN)
MAX_SELECTOR = 63


class NoSuchDomain(DirectoryError):
    """Keys are only made for a local domain: the domain resource is not there (404)."""

    status = 404
    msg = "domain not found"


@dataclass(frozen=True)
class DkimKey:
    """A stored key as anyone may see it: the public half and where DNS must publish it."""

    domain: str
    selector: str
    algorithm: str
    public_key: str
    created_at: datetime
    active: bool  # the domain's newest key: the one mail is signed with

    @property
    def key_type(self) -> str:
        return "ed25519" if self.algorithm == ED25519 else "rsa"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dns_value(self) -> str:
        return txt_value(f"v=DKIM1; k={self.key_type}; p={self.public_key}")


@dataclass(frozen=True)
class SigningKey:
    """What dkimpy signs with (``private`` in the form its ``DKIM.sign`` takes)."""

    domain: str
    selector: str
    algorithm: str
    private: bytes = field(repr=False)


def txt_value(record: str) -> str:
    """The TXT record as a zone file (or a DNS provider's form) takes it: the text itself
    when it fits one 255-octet string, else quoted strings of at most 255 octets each, which
    a verifier joins without spaces (RFC 6376 3.6.2.2)."""
    if len(record) <= TXT_STRING:
        return record
    return " ".join(f'"{record[i:i + TXT_STRING]}"' for i in range(0, len(record), TXT_STRING))


def check_selector(text: str) -> str:
    """The selector in lower case, or :class:`InvalidEntry`: DNS labels (letters, digits,
    hyphens; dots between labels), as it becomes ``<selector>._domainkey.<domain>``."""
    selector = text.strip().lower()
    if not (0 < len(selector) <= MAX_SELECTOR and SELECTOR.fullmatch(selector)):
        raise InvalidEntry(f"selector: {text!r} is not a DNS name of letters, digits and "
                           f"hyphens (at most {MAX_SELECTOR} characters)")
    return selector


def default_selectors(moment: datetime) -> list[str]:
    """The dated selectors tried in turn: ``tmail202612``, then the day, then the second
    (a second rotation in the same month must not reuse a published name)."""
    return [moment.strftime(f"tmail{pattern}") for pattern in ("%Y%m", "%Y%m%d", "%Y%m%d%H%M%S")]


def generate(algorithm: str) -> tuple[str, str]:
    """A new key pair: ``(private, public)`` as stored (see :data:`dkim_keys`)."""
    if algorithm == ED25519:
        secret = ed25519.Ed25519PrivateKey.generate()
        seed = secret.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        public = secret.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
        return base64.b64encode(seed).decode(), base64.b64encode(public).decode()
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode(), base64.b64encode(spki).decode()


def _when(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class KeyStore:
    def __init__(self, database: Database, local_domains: tuple[str, ...] = ()) -> None:
        """``local_domains``: ``TMAIL_LOCAL_DOMAINS``, local as the directory's own."""
        self.db = database
        self._extra = local_domains

    def list(self, domain: str | None = None) -> list[DkimKey]:
        """Every key (of ``domain``), by domain, the active one first, then newest first."""
        query = select(dkim_keys.c.domain, dkim_keys.c.selector, dkim_keys.c.algorithm,
                       dkim_keys.c.public_key, dkim_keys.c.created_at)
        if domain is not None:
            query = query.where(dkim_keys.c.domain == domain)
        with self.db.connect() as conn:
            rows = conn.execute(query.order_by(dkim_keys.c.domain, dkim_keys.c.created_at.desc(),
                                               dkim_keys.c.id.desc())).all()
        keys, seen = [], set()
        for row in rows:
            keys.append(DkimKey(row.domain, row.selector, row.algorithm, row.public_key,
                                _when(row.created_at), active=row.domain not in seen))
            seen.add(row.domain)
        return keys

    def get(self, domain: str) -> DkimKey | None:
        """The key ``domain`` signs with (its newest), or ``None``."""
        ascii_domain = _ascii_or_none(domain)
        found = self.list(ascii_domain) if ascii_domain else []
        return found[0] if found else None

    def create(self, domain: str, algorithm: str = "rsa", selector: str | None = None,
               ) -> DkimKey:
        """A new key for the local ``domain``, signing from now on: :class:`InvalidEntry`
        for a bad name, :class:`NoSuchDomain` if it is not local, :class:`Conflict` if the
        selector is taken."""
        _, ascii_domain = normalize_domain(domain)
        signature_algorithm = ALGORITHMS.get(algorithm)
        if signature_algorithm is None:
            raise InvalidEntry(f"algorithm: {algorithm!r} is not one of rsa, ed25519")
        wanted = [check_selector(selector)] if selector is not None else None
        private, public = generate(signature_algorithm)  # before the transaction: ~0.1 s
        now = int(time.time())
        try:
            with self.db.begin() as conn:
                if not is_local_domain(conn, ascii_domain, self._extra):
                    raise NoSuchDomain(f"{ascii_domain} is not a local domain (add it first: "
                                       f"POST /domains/{ascii_domain})")
                chosen = self._free_selector(conn, ascii_domain, wanted or default_selectors(
                    _when(now)), explicit=wanted is not None)
                conn.execute(insert(dkim_keys).values(
                    domain=ascii_domain, selector=chosen, algorithm=signature_algorithm,
                    private_key=private, public_key=public, created_at=now))
                bump_generation(conn)  # the signers' caches of keys (signing.py)
        except sa_exc.IntegrityError:  # the same selector, made at that instant elsewhere
            raise Conflict(f"{ascii_domain}: a key was just made with that selector",
                           "selector exists") from None
        return DkimKey(ascii_domain, chosen, signature_algorithm, public, _when(now), True)

    @staticmethod
    def _free_selector(conn: Connection, domain: str, candidates: list[str], *,
                       explicit: bool) -> str:
        taken = set(conn.scalars(select(dkim_keys.c.selector).where(
            dkim_keys.c.domain == domain)))
        for candidate in candidates:
            if candidate not in taken:
                return candidate
        what = "selector exists" if explicit else "no free dated selector: give one"
        raise Conflict(f"{candidates[-1]}._domainkey.{domain}", what)

    def delete(self, domain: str) -> int:
        """Delete every key of ``domain`` (its mail is no longer signed); how many."""
        ascii_domain = _ascii_or_none(domain)
        if ascii_domain is None:
            return 0
        with self.db.begin() as conn:
            removed = conn.execute(delete(dkim_keys).where(
                dkim_keys.c.domain == ascii_domain)).rowcount
            if removed:
                bump_generation(conn)  # no signer keeps signing with a deleted key
            return removed

    def signing_key(self, conn: Connection, domain: str) -> SigningKey | None:
        """The private key ``domain``'s mail is signed with (the one reader of it)."""
        row = conn.execute(select(dkim_keys.c.selector, dkim_keys.c.algorithm,
                                  dkim_keys.c.private_key)
                           .where(dkim_keys.c.domain == domain)
                           .order_by(dkim_keys.c.created_at.desc(), dkim_keys.c.id.desc())
                           .limit(1)).first()
        if row is None:
            return None
        return SigningKey(domain, row.selector, row.algorithm, row.private_key.encode())


def _ascii_or_none(domain: str) -> str | None:
    try:
        return normalize_domain(domain)[1]
    except InvalidEntry:
        return None
