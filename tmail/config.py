"""Every setting of tmail: its environment variable, its default, and its validation.

All processes (API, SMTP receiver, queue runner, ops CLI) build one :class:`Config` with
:func:`load` at start-up. A bad value stops the process with a message naming the variable,
instead of failing later in the middle of a delivery. Nothing else reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tmail import workers

T = TypeVar("T")

DEFAULT_ADMIN_PASSWORD = "admin"

# A node name goes into queue records, metric labels and file names: ASCII letters, digits
# and ``. _ -``, starting with a letter or digit (so never ``..`` or an option), at most 63
# characters (one DNS label), like a short host name.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def default_node() -> str:
    """The node's name when ``TMAIL_NODE`` is unset: the host name, as Postfix's
    ``myhostname`` starts from (``socket.gethostname``: usually the short name)."""
    return socket.gethostname()


class ConfigError(ValueError):
    """A setting has a value tmail cannot use; the message names the variable."""


@dataclass(frozen=True)
class HostPort:
    """A ``host:port`` pair, as used for listening addresses and routes."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class Config:
    """The validated settings; build it with :func:`load` (tests may build it directly)."""

    data_dir: Path
    mailboxes_dir: Path
    api_bind: HostPort = HostPort("127.0.0.1", 8080)
    admin_user: str = "admin"
    admin_password: str = DEFAULT_ADMIN_PASSWORD
    console_session_ttl: float = 28_800.0  # a web console sign-in lasts this long (8 hours)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    default_quota: str = "1G"
    hostname: str = field(default_factory=socket.getfqdn)
    node: str = field(default_factory=default_node)
    smtp_bind: HostPort = HostPort("127.0.0.1", 2525)
    smtp_auth_require_tls: bool = True
    # the submission listeners for mail clients (RFC 6409 on 587, RFC 8314 on 465); None: off
    submission_bind: HostPort | None = None
    submissions_bind: HostPort | None = None
    smtp_processes: int = field(default_factory=workers.default_count)
    local_domains: tuple[str, ...] = ()
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    postmaster: str = ""  # TMAIL_POSTMASTER: where postmaster@ goes without alias or user
    max_message_size: int = 26_214_400
    max_recipients: int = 100
    # --- SMTP receiver: protocol and resource limits (Postfix's smtpd_* in brackets) -------
    smtp_smtputf8: bool = False  # RFC 6531, off until every layer of the path supports it
    smtp_bare_newline: str = "reject"  # smtpd_forbid_bare_newline: reject or normalize
    max_hops: int = 50  # hopcount_limit
    smtp_max_sessions: int = 100  # per receiver process (default_process_limit)
    smtp_max_sessions_per_ip: int = 50  # smtpd_client_connection_count_limit
    smtp_timeout: float = 300.0  # smtpd_timeout: one command line, one reply
    smtp_min_data_rate: int = 500  # smtpd_min_data_rate: DATA deadline grows by 1 s per N bytes
    smtp_hard_error_limit: int = 20  # smtpd_hard_error_limit
    smtp_junk_command_limit: int = 100  # smtpd_junk_command_limit
    smtp_rejected_rcpt_limit: int = 20  # rejected RCPTs in one session (directory harvesting)
    smtp_auth_failure_limit: int = 10  # failed AUTHs per client IP within the window below
    smtp_auth_failure_window: float = 600.0  # seconds an AUTH failure counts for its IP
    routes: tuple[tuple[str, HostPort], ...] = ()
    runner_processes: int = field(default_factory=workers.default_count)
    runner_concurrency: int = 20
    runner_destination_concurrency: int = 10
    runner_timeout: float = 60.0
    runner_starttls: str = "may"
    runner_sweep_interval: float = 60.0
    retry_min_backoff: float = 300.0
    retry_max_backoff: float = 4000.0
    max_queue_lifetime: float = 432_000.0
    delay_warning: float = 14_400.0
    over_quota_permanent: bool = False
    orphan_grace: float = 3600.0
    pipe_user: str = "nobody"  # pipe(8)'s user=: who runs the commands of pipe aliases
    pipe_timeout: float = 60.0  # pipe(8)'s command_time_limit
    metrics_public: bool = False
    database_url: str = ""  # TMAIL_DATABASE_URL; empty: SQLite at <data dir>/users.db

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def users_db(self) -> Path:
        return self.data_dir / "users.db"

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the shared database (users, and the directory tables)."""
        return self.database_url or f"sqlite:///{self.users_db}"

    @property
    def metrics_db(self) -> Path:
        return self.data_dir / "metrics.db"

    @property
    def tls_cert_path(self) -> Path:
        """The certificate to serve: the configured one, or the one generated in the data dir."""
        return self.tls_cert or self.data_dir / "tls" / "cert.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "key.pem"

    @property
    def tls_is_generated(self) -> bool:
        return self.tls_cert is None

    def route_for(self, domain: str) -> HostPort | None:
        """The smtproute for ``domain``: an exact match first, then the ``*`` smart host."""
        domain = domain.lower()
        wildcard = None
        for pattern, target in self.routes:
            if pattern == domain:
                return target
            if pattern == "*":
                wildcard = target
        return wildcard


# --- parsers: each turns one raw string into a value or raises ValueError(reason) ---------


def parse_host_port(raw: str) -> HostPort:
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not a number between 1 and 65535")
    return HostPort(host, int(port))


def parse_optional_bind(raw: str) -> HostPort | None:
    """``HOST:PORT``, or empty for no listener."""
    return parse_host_port(raw.strip()) if raw.strip() else None


def parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def parse_seconds(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be zero or more seconds")
    return value


def parse_domains(raw: str) -> tuple[str, ...]:
    domains = tuple(d.strip().lower().rstrip(".") for d in raw.split(",") if d.strip())
    for domain in domains:
        if "@" in domain or " " in domain or ("." not in domain and domain != "localhost"):
            raise ValueError(f"{domain!r} is not a domain name")
    return domains


def parse_networks(
    raw: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()
    )


def parse_address(raw: str) -> str:
    from tmail.address import Address, AddressError

    if not raw.strip():
        return ""
    try:
        return str(Address.parse(raw.strip(), allow_utf8=True))
    except AddressError as exc:
        raise ValueError(f"not an address: {exc}") from None


def parse_routes(raw: str) -> tuple[tuple[str, HostPort], ...]:
    """tmail's smtproutes: ``domain=host:port,*=host:port``."""
    routes = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        domain, sep, target = part.partition("=")
        if not sep or not domain.strip():
            raise ValueError(f"{part!r} is not DOMAIN=HOST:PORT")
        routes.append((domain.strip().lower(), parse_host_port(target.strip())))
    return tuple(routes)


def parse_starttls(raw: str) -> str:
    if raw not in {"may", "encrypt", "none"}:
        raise ValueError("expected may, encrypt or none")
    return raw


def parse_bare_newline(raw: str) -> str:
    if raw not in {"reject", "normalize"}:
        raise ValueError("expected reject or normalize")
    return raw


def parse_positive_seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def parse_node(raw: str) -> str:
    if not _NODE_NAME.fullmatch(raw):
        raise ValueError("a node name is 1 to 63 ASCII letters, digits, '.', '_' or '-', "
                         "starting with a letter or a digit")
    return raw


def parse_pipe_user(raw: str) -> str:
    """A user name (resolved when a pipe runs: the user may exist only on runner hosts);
    never root, which Postfix's pipe(8) refuses too."""
    name = raw.strip()
    if not name or any(ch in name for ch in ":/ \t") or not name.isprintable():
        raise ValueError("expected a user name")
    if name == "root":
        raise ValueError("pipe commands never run as root")
    return name


def parse_quota(raw: str) -> str:
    from tmail.quota import parse_quota as parse  # the one quota grammar

    parse(raw)
    return raw


def parse_database_url(raw: str) -> str:
    """SQLite (``sqlite:////path/users.db``) or PostgreSQL through psycopg 3
    (``postgresql+psycopg://user:pass@host/db``; plain ``postgresql://`` means the same)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not raw:
        return ""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError("not a database URL such as postgresql+psycopg://user:pass@host/tmail"
                         " or sqlite:////var/lib/tmail/users.db") from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if url.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file that every tmail process opens")
    elif url.drivername in ("postgresql", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    else:
        raise ValueError(f"{url.drivername}: tmail speaks sqlite:// and "
                         "postgresql+psycopg:// (psycopg 3)")
    return url.render_as_string(hide_password=False)


# A value that may hold a password is not repeated in the error message.
_SECRET_VALUES = {"TMAIL_DATABASE_URL"}

# variable name -> (Config field, parser). The README's configuration table mirrors this.
_SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "TMAIL_DATA_DIR": ("data_dir", lambda raw: Path(raw).resolve()),
    "TMAIL_MAILBOXES_DIR": ("mailboxes_dir", lambda raw: Path(raw).resolve()),
    "TMAIL_API_BIND": ("api_bind", parse_host_port),
    "TMAIL_ADMIN_USER": ("admin_user", str),
    "TMAIL_ADMIN_PASSWORD": ("admin_password", str),
    "TMAIL_CONSOLE_SESSION_TTL": ("console_session_ttl", parse_positive_seconds),
    "TMAIL_TLS_CERT": ("tls_cert", lambda raw: Path(raw).resolve() if raw else None),
    "TMAIL_TLS_KEY": ("tls_key", lambda raw: Path(raw).resolve() if raw else None),
    "TMAIL_DEFAULT_QUOTA": ("default_quota", parse_quota),
    "TMAIL_HOSTNAME": ("hostname", str),
    "TMAIL_NODE": ("node", parse_node),
    "TMAIL_SMTP_BIND": ("smtp_bind", parse_host_port),
    "TMAIL_SMTP_AUTH_REQUIRE_TLS": ("smtp_auth_require_tls", parse_bool),
    "TMAIL_SUBMISSION_BIND": ("submission_bind", parse_optional_bind),
    "TMAIL_SUBMISSIONS_BIND": ("submissions_bind", parse_optional_bind),
    "TMAIL_SMTP_PROCESSES": ("smtp_processes", parse_positive_int),
    "TMAIL_LOCAL_DOMAINS": ("local_domains", parse_domains),
    "TMAIL_RELAY_NETWORKS": ("relay_networks", parse_networks),
    "TMAIL_POSTMASTER": ("postmaster", parse_address),
    "TMAIL_MAX_MESSAGE_SIZE": ("max_message_size", parse_positive_int),
    "TMAIL_MAX_RECIPIENTS": ("max_recipients", parse_positive_int),
    "TMAIL_SMTP_SMTPUTF8": ("smtp_smtputf8", parse_bool),
    "TMAIL_SMTP_BARE_NEWLINE": ("smtp_bare_newline", parse_bare_newline),
    "TMAIL_MAX_HOPS": ("max_hops", parse_positive_int),
    "TMAIL_SMTP_MAX_SESSIONS": ("smtp_max_sessions", parse_positive_int),
    "TMAIL_SMTP_MAX_SESSIONS_PER_IP": ("smtp_max_sessions_per_ip", parse_positive_int),
    "TMAIL_SMTP_TIMEOUT": ("smtp_timeout", parse_positive_seconds),
    "TMAIL_SMTP_MIN_DATA_RATE": ("smtp_min_data_rate", parse_positive_int),
    "TMAIL_SMTP_HARD_ERROR_LIMIT": ("smtp_hard_error_limit", parse_positive_int),
    "TMAIL_SMTP_JUNK_COMMAND_LIMIT": ("smtp_junk_command_limit", parse_positive_int),
    "TMAIL_SMTP_REJECTED_RCPT_LIMIT": ("smtp_rejected_rcpt_limit", parse_positive_int),
    "TMAIL_SMTP_AUTH_FAILURE_LIMIT": ("smtp_auth_failure_limit", parse_positive_int),
    "TMAIL_SMTP_AUTH_FAILURE_WINDOW": ("smtp_auth_failure_window", parse_positive_seconds),
    "TMAIL_ROUTES": ("routes", parse_routes),
    "TMAIL_RUNNER_PROCESSES": ("runner_processes", parse_positive_int),
    "TMAIL_RUNNER_CONCURRENCY": ("runner_concurrency", parse_positive_int),
    "TMAIL_RUNNER_DESTINATION_CONCURRENCY": ("runner_destination_concurrency", parse_positive_int),
    "TMAIL_RUNNER_TIMEOUT": ("runner_timeout", parse_seconds),
    "TMAIL_RUNNER_STARTTLS": ("runner_starttls", parse_starttls),
    "TMAIL_RUNNER_SWEEP_INTERVAL": ("runner_sweep_interval", parse_seconds),
    "TMAIL_RETRY_MIN_BACKOFF": ("retry_min_backoff", parse_seconds),
    "TMAIL_RETRY_MAX_BACKOFF": ("retry_max_backoff", parse_seconds),
    "TMAIL_MAX_QUEUE_LIFETIME": ("max_queue_lifetime", parse_seconds),
    "TMAIL_DELAY_WARNING": ("delay_warning", parse_seconds),
    "TMAIL_OVER_QUOTA_PERMANENT": ("over_quota_permanent", parse_bool),
    "TMAIL_ORPHAN_GRACE": ("orphan_grace", parse_seconds),
    "TMAIL_METRICS_PUBLIC": ("metrics_public", parse_bool),
    "TMAIL_PIPE_USER": ("pipe_user", parse_pipe_user),
    "TMAIL_PIPE_TIMEOUT": ("pipe_timeout", parse_positive_seconds),
    "TMAIL_DATABASE_URL": ("database_url", parse_database_url),
}


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from ``environ`` (default: the process environment).

    Raises :class:`ConfigError` naming the first variable whose value does not parse.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        "data_dir": Path("var").resolve(),
        "mailboxes_dir": Path("mailboxes").resolve(),
    }
    for name, (attr, parse) in _SETTINGS.items():
        raw = env.get(name)
        if raw is None:
            continue
        try:
            values[attr] = parse(raw)
        except ValueError as exc:
            shown = "(value not shown)" if name in _SECRET_VALUES else repr(raw)
            raise ConfigError(f"{name}={shown}: {exc}") from None
    if "node" not in values:
        try:
            values["node"] = parse_node(default_node())
        except ValueError as exc:
            raise ConfigError(f"TMAIL_NODE is unset and the host name {default_node()!r} "
                              f"cannot be a node name: set TMAIL_NODE ({exc})") from None
    config = Config(**values)  # type: ignore[arg-type]
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TMAIL_TLS_CERT and TMAIL_TLS_KEY must be set together")
    _check_submission(config)
    if config.retry_min_backoff > config.retry_max_backoff:
        raise ConfigError("TMAIL_RETRY_MIN_BACKOFF is larger than TMAIL_RETRY_MAX_BACKOFF")
    if not config.admin_user:
        raise ConfigError("TMAIL_ADMIN_USER must not be empty")
    if not config.admin_password:
        raise ConfigError("TMAIL_ADMIN_PASSWORD must not be empty (an empty Basic password is"
                          " what a client sends when it has none)")


def _check_submission(config: Config) -> None:
    """Each listener on its own address; a mail client that logs in on 587 (after STARTTLS)
    or 465 (TLS from the first byte) must be able to verify the server's certificate, so
    beyond loopback the submission ports need TMAIL_TLS_CERT: the generated one only names
    localhost, and every client would warn or, worse, teach its user to click through."""
    binds = [("TMAIL_SMTP_BIND", config.smtp_bind),
             ("TMAIL_SUBMISSION_BIND", config.submission_bind),
             ("TMAIL_SUBMISSIONS_BIND", config.submissions_bind)]
    seen: list[tuple[str, HostPort]] = []
    for name, bind in binds:
        if bind is None:
            continue
        for other, taken in seen:  # SO_REUSEPORT would let both bind, and share the port
            if bind.port == taken.port and (bind.host == taken.host or {bind.host, taken.host}
                                            & {"0.0.0.0", "::"}):
                raise ConfigError(f"{name}={bind} overlaps {other}={taken}")
        seen.append((name, bind))
        if name != "TMAIL_SMTP_BIND" and config.tls_is_generated and not bind.is_loopback:
            raise ConfigError(
                f"{name}={bind}: the submission ports need a certificate mail clients can "
                "verify (AUTH is only allowed over TLS there): set TMAIL_TLS_CERT and "
                "TMAIL_TLS_KEY")


def check_api_exposure(config: Config) -> None:
    """Refuse to serve the admin API beyond loopback with the well-known default password."""
    if not config.api_bind.is_loopback and config.admin_password == DEFAULT_ADMIN_PASSWORD:
        raise ConfigError(
            f"TMAIL_API_BIND={config.api_bind} is not a loopback address and "
            "TMAIL_ADMIN_PASSWORD is still the default 'admin': set a real password first"
        )
