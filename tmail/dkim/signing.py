"""Signing at queue time: the message gets its ``DKIM-Signature:`` once, in the queue.

The :class:`DkimSigner` is the queue's signing hook (``QueueStore(signer=...)``), so that the
SMTP receiver and ``sendmail`` sign in the same place: the message is complete in its spool
file, and every retry and every node send the bytes signed here, whose SHA-1 is the record's
``Key``.

Signed: mail from a trusted submitter (:mod:`.trust`) whose ``From:`` names one domain with a
key; ``d=`` is that domain (DMARC alignment), the selector its newest key's. Headers signed
(those present, each as often as it occurs): :data:`SIGNED_HEADERS`, ``From`` once more (an
added ``From:`` breaks the signature); canonicalisation relaxed/relaxed.

Memory: dkimpy's ``DKIM`` takes the message as one bytes-like object. It gets the spool file
``mmap``ed (no copy read into memory), but splits and canonicalises the body in memory: 3.6
times its size at the peak (73 MiB of allocations for a 20 MiB message, by tracemalloc). The
receiver signs in its single commit thread, so that one process signs one message at a time:
the peak is bounded by about four ``TMAIL_MAX_MESSAGE_SIZE``, and only for trusted mail.
The signed file is the header and then the spool's bytes, written from the mapping.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import itertools
import logging
import mmap
import os
import threading
from dataclasses import replace
from pathlib import Path

import dkim

from tmail import fsutil
from tmail.address import AddressError, parse_domain
from tmail.config import Config
from tmail.db import Database, DatabaseUnavailable, open_database
from tmail.directory.lookup import Directory
from tmail.dkim.keys import KeyStore, SigningKey
from tmail.dkim.trust import is_trusted
from tmail.message import HEADER_LIMIT, header_block, header_fields, parse_headers
from tmail.queue import Envelope, QueueWriteError
from tmail.queue.spool import SpooledFile

log = logging.getLogger(__name__)

SIGNED_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "mime-version",
                  "content-type", "reply-to", "in-reply-to", "references")
CANONICALIZATION = (b"relaxed", b"relaxed")
_CHUNK = 1024 * 1024
_CACHED_DOMAINS = 4096  # From: domains a signer remembers (a key or none) per generation


def from_domain(headers: bytes) -> str | None:
    """The A-label domain of the ``From:`` header, when there is one field whose addresses
    all share one domain (what DMARC aligns with); else ``None`` (nothing to sign for)."""
    fields = header_fields(header_block(headers), "From")  # as sent (8-bit: SMTPUTF8)
    if len(fields) != 1:
        return None
    value = fields[0].decode("utf-8", "replace")
    domains = set()
    for _, address in email.utils.getaddresses([value]):
        local, at, domain = address.rpartition("@")
        if not (local and at):
            return None
        try:
            domains.add(parse_domain(domain)[1])
        except AddressError:
            return None
    if len(domains) != 1 or next(iter(domains)).startswith("["):  # a literal has no key
        return None
    return domains.pop()


def signed_headers(headers: bytes) -> list[bytes]:
    """The ``h=`` list: each of :data:`SIGNED_HEADERS` present, as often as it occurs, and
    ``from`` once more (over-signing: a second ``From:`` added later fails the check)."""
    names = [name.lower() for name in parse_headers(headers)]
    wanted = [name.encode() for name in SIGNED_HEADERS for _ in range(names.count(name))]
    return [*wanted, b"from"]


class DkimSigner:
    """The queue's signing hook: ``signer(envelope, spooled) -> spooled`` (the same file when
    nothing is signed, else a new one, the old one removed).

    Keys (and their absence) are kept per domain for as long as the directory generation
    does not move: every key written or deleted bumps it (:mod:`.keys`), so a new key signs
    from the next message on every node, and a trusted client's message costs the
    generation read its trust check takes anyway, not one more query (the query was the
    biggest share of the receiver's CPU for such clients: docs/benchmarks.md).
    """

    def __init__(self, database: Database, directory: Directory) -> None:
        self._directory = directory
        self._keys = KeyStore(database)
        self._cache: dict[str, SigningKey | None] = {}
        self._cache_generation = -1
        self._lock = threading.Lock()  # the receiver signs in one thread; sendmail in its own

    def __call__(self, envelope: Envelope, raw: SpooledFile) -> SpooledFile:
        try:
            key = self._key_for(envelope, raw.headers)
        except DatabaseUnavailable as exc:  # the client tries again: 451, or EX_TEMPFAIL
            raise QueueWriteError(errno.EAGAIN, f"cannot sign the message now: {exc}") from exc
        return raw if key is None else self._sign(key, raw)

    def _key_for(self, envelope: Envelope, headers: bytes) -> SigningKey | None:
        """The key to sign with, if any. Trust first: most mail an MX takes comes from
        anonymous clients, and costs this one look-up (the relay networks), no parsing."""
        with self._directory.reading() as reader:
            if not is_trusted(envelope, reader.in_relay_networks):
                return None
            domain = from_domain(headers)
            if not domain:
                return None
            generation = reader.snapshot.generation
            with self._lock:
                if generation != self._cache_generation:
                    self._cache, self._cache_generation = {}, generation
                if domain in self._cache:
                    return self._cache[domain]
            key = self._keys.signing_key(reader.conn, domain)
            with self._lock:
                if generation == self._cache_generation and len(self._cache) < _CACHED_DOMAINS:
                    self._cache[domain] = key
            return key

    def _sign(self, key: SigningKey, raw: SpooledFile) -> SpooledFile:
        with open(raw.path, "rb") as source, mmap.mmap(source.fileno(), 0,
                                                       access=mmap.ACCESS_READ) as message:
            try:
                signature = dkim.DKIM(message, signature_algorithm=key.algorithm.encode(),
                                      logger=log).sign(
                    key.selector.encode(), key.domain.encode(), key.private,
                    canonicalize=CANONICALIZATION, include_headers=signed_headers(raw.headers))
            except dkim.DKIMException as exc:  # a header dkimpy cannot parse: sent unsigned
                log.warning("not signed for d=%s: %s", key.domain, exc)
                return raw
            signed = _write_signed(raw.path.parent, signature, message)
            sha1 = hashlib.sha1(signature)
            sha1.update(message)
        fsutil.unlink_quietly(raw.path)
        log.info("signed d=%s s=%s a=%s", key.domain, key.selector, key.algorithm)
        return replace(raw, path=signed, key=sha1.hexdigest(), size=raw.size + len(signature),
                       headers=(signature + raw.headers)[:HEADER_LIMIT])


def _write_signed(tmp_dir: Path, signature: bytes, message: mmap.mmap) -> Path:
    """A new spool file: the signature, then the message's bytes (from the mapping, a chunk
    at a time: never a copy of the whole message in memory)."""
    path = fsutil.temp_name(tmp_dir, ".spool")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, fsutil.FILE_MODE)
    try:
        chunks = (message[offset:offset + _CHUNK] for offset in range(0, len(message), _CHUNK))
        for data in itertools.chain([signature], chunks):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            fsutil.unlink_quietly(path)
        raise
    os.close(fd)
    return path


def signer_for(config: Config) -> DkimSigner:
    """The process's signer for the queue of ``config`` (its database, its directory)."""
    database = open_database(config)
    return DkimSigner(database, Directory(database, config))
