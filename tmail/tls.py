"""The TLS certificate shared by the API and the SMTP receiver.

When ``TMAIL_TLS_CERT``/``TMAIL_TLS_KEY`` are unset, a self-signed certificate for localhost
is generated once into ``<data dir>/tls/``. The API and the receiver may start in any order
or at the same instant, so the pair is built in a private temp directory and published with
one ``rename`` of that directory: exactly one process wins, the others use its files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tmail.config import Config
from tmail.fsutil import fsync_dir


def ensure_certificate(config: Config) -> tuple[Path, Path]:
    """Return (certificate, key) paths, generating the self-signed pair when needed."""
    cert, key = config.tls_cert_path, config.tls_key_path
    if not config.tls_is_generated or cert.exists():
        return cert, key
    target = cert.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tls-", dir=target.parent))
    try:
        cert_pem, key_pem = _self_signed(config.hostname)
        _write(staging / key.name, key_pem, 0o600)
        _write(staging / cert.name, cert_pem, 0o644)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)  # fails if another process published first
        except OSError:
            if not cert.exists():
                raise
        else:
            fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
