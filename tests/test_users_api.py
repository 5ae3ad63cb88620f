"""The users API against the real gunicorn over HTTPS, on SQLite and on PostgreSQL: the seed's
contract, then bad input."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from passlib.hash import bcrypt, sha512_crypt

from tests.conftest import REPO, ApiServer

JSON = "application/json; charset=UTF-8"
SEED_KEYS = ["Id", "Login", "Passwd", "DovePasswd", "Active", "AuthRelay", "HaveMailbox",
             "MailboxQuota", "Home", "IsCatchall"]


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    """Every test here runs on each engine: SQLite and PostgreSQL (tests/conftest.py)."""
    return engine_api


def new_login(domain: str = "tmail.io") -> str:
    return f"u{secrets.token_hex(4)}@{domain}"


def create(api: ApiServer, login: str, **body: object) -> requests.Response:
    payload = {"passwd": "mot de passe", "authRelay": True, "haveMailbox": True,
               "mailboxQuota": "1G", **body}
    return api.session.post(api.url(f"/users/{login}"), json=payload)


def test_created_user_has_the_seed_keys_types_and_hashes(api: ApiServer) -> None:
    login = new_login()
    created = create(api, login)
    assert created.status_code == 201
    assert created.headers["Location"].endswith(f"/users/{login}")

    response = api.session.get(api.url(f"/users/{login}"))
    user = response.json()
    assert response.status_code == 200 and response.headers["Content-Type"] == JSON
    assert list(user) == SEED_KEYS
    assert isinstance(user["Id"], int) and user["Active"] == "Y"
    assert (user["AuthRelay"], user["HaveMailbox"], user["MailboxQuota"]) == (True, True, "1G")
    assert user["Passwd"].startswith("$2a$10$") and bcrypt.verify("mot de passe", user["Passwd"])
    prefix, scheme, salt, _ = user["DovePasswd"].split("$")
    assert (prefix, scheme, len(salt)) == ("", "6", 16)
    assert sha512_crypt.verify("mot de passe", user["DovePasswd"])
    local, domain = login.split("@")
    expected_home = api.config.mailboxes_dir / domain[0] / domain / local[0] / local
    assert user["Home"] == str(expected_home)


def test_user_without_mailbox_has_no_home_and_no_quota(api: ApiServer) -> None:
    login = new_login()
    assert api.session.post(api.url(f"/users/{login}"), json={"passwd": "secret1"}).ok
    user = api.session.get(api.url(f"/users/{login}")).json()
    assert (user["Home"], user["MailboxQuota"], user["HaveMailbox"]) == ("", "", False)


def test_duplicate_login_is_refused_as_in_the_seed(api: ApiServer) -> None:
    login = new_login()
    assert create(api, login).status_code == 201
    again = create(api, login)
    assert again.status_code == 422
    assert again.json() == {"msg": "unable to create new user",
                            "raw": "UNIQUE constraint failed: users.login"}


def test_list_users_includes_created_ones(api: ApiServer) -> None:
    login = new_login()
    create(api, login)
    users = api.session.get(api.url("/users")).json()
    assert login in [u["Login"] for u in users]
    assert [u["Id"] for u in users] == sorted(u["Id"] for u in users)


def test_put_changes_both_hashes(api: ApiServer) -> None:
    login = new_login()
    create(api, login)
    before = api.session.get(api.url(f"/users/{login}")).json()
    response = api.session.put(api.url(f"/users/{login}"), json={"passwd": "nouveau secret"})
    assert response.status_code == 204 and response.content == b""
    after = api.session.get(api.url(f"/users/{login}")).json()
    assert bcrypt.verify("nouveau secret", after["Passwd"])
    assert sha512_crypt.verify("nouveau secret", after["DovePasswd"])
    assert after["Passwd"] != before["Passwd"] and after["DovePasswd"] != before["DovePasswd"]


def test_delete_keeps_the_maildir_on_disk(api: ApiServer) -> None:
    login = new_login()
    home = Path(create(api, login).json()["Home"])
    (home / "Maildir" / "new").mkdir(parents=True)
    assert api.session.delete(api.url(f"/users/{login}")).status_code == 200
    assert api.session.get(api.url(f"/users/{login}")).status_code == 404
    assert (home / "Maildir" / "new").is_dir()


@pytest.mark.parametrize(
    ("login", "body", "field"),
    [
        ("bad1@tmail.io", {"passwd": "short"}, "passwd"),
        ("bad2@tmail.io", {"passwd": "x" * 73}, "passwd"),
        ("bad3@tmail.io", {"passwd": "é" * 37}, "passwd"),  # 74 bytes
        ("bad4@tmail.io", {"passwd": "secret1", "authRelay": "yes"}, "authRelay"),
        ("bad5@tmail.io", {"passwd": "secret1", "haveMailbox": 1}, "haveMailbox"),
        ("bad6@tmail.io", {"passwd": "secret1", "nope": True}, "nope"),
        ("bad7@tmail.io", {"passwd": "secret1", "haveMailbox": True, "mailboxQuota": "1T"},
         "mailboxQuota"),
        ("bad8@tmail.io", {"authRelay": True}, "passwd"),
        ("abc", {"passwd": "secret1"}, "login"),
        ("not-an-address", {"passwd": "secret1", "haveMailbox": True}, "login"),
        ("a..b@tmail.io", {"passwd": "secret1"}, "login"),
        ("a%20b@tmail.io", {"passwd": "secret1"}, "login"),
        ("a\\b@tmail.io", {"passwd": "secret1"}, "login"),
        ("cat@tmail.io", {"passwd": "secret1", "isCatchall": True}, "isCatchall"),
    ],
)
def test_invalid_fields_get_422_naming_the_field(
    api: ApiServer, login: str, body: dict[str, object], field: str
) -> None:
    response = api.session.post(api.url(f"/users/{login}"), json=body)
    assert response.status_code == 422
    assert response.headers["Content-Type"] == JSON
    error = response.json()
    assert set(error) == {"msg", "raw"} and f"{field}:" in error["raw"]


def test_one_catchall_per_domain(api: ApiServer) -> None:
    domain = f"d{secrets.token_hex(3)}.org"
    assert create(api, f"first@{domain}", isCatchall=True).status_code == 201
    second = create(api, f"second@{domain}", isCatchall=True)
    assert second.status_code == 422 and "catchall" in second.json()["raw"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/users/x1@tmail.io", {"data": "{not json"}, 400),
        ("post", "/users/x4@tmail.io", {"data": "[" * 100_000 + "]" * 100_000}, 400),
        ("put", "/users/x4@tmail.io", {"data": '{"a":' * 100_000}, 400),
        ("post", "/users/x5@tmail.io", {"data": b'{"passwd": "\xff\xfe secret"}'}, 400),
        ("post", "/users/x6@tmail.io", {"data": '{"passwd": "\\ud800 secret"}'}, 400),
        ("post", "/users/x7@tmail.io", {"data": b""}, 400),
        ("post", "/users/x2@tmail.io", {"json": ["a", "list"]}, 400),
        ("post", "/users/x3@tmail.io", {"data": "x" * (1024 * 1024 + 1)}, 413),
        ("get", "/no/such/route", {}, 404),
        ("get", "/users/nobody@tmail.io", {}, 404),
        ("put", "/users/nobody@tmail.io", {"json": {"passwd": "secret1"}}, 404),
        ("delete", "/users/nobody@tmail.io", {}, 404),
        ("patch", "/users", {}, 405),
    ],
)
def test_errors_are_json_with_msg_and_raw(
    api: ApiServer, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    response = api.session.request(method, api.url(path), **kwargs)
    assert response.status_code == status
    assert response.headers["Content-Type"] == JSON
    body = response.json()
    assert set(body) == {"msg", "raw"}
    assert all(isinstance(value, str) for value in body.values())


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("root", "admin")])
def test_missing_or_wrong_credentials_get_401(api: ApiServer, auth: tuple[str, str] | None) -> None:
    session = requests.Session()
    session.trust_env, session.verify = False, str(api.cert)
    response = session.get(api.url("/users"), auth=auth, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="tmail"'
    assert response.headers["Content-Type"] == JSON
    assert set(response.json()) == {"msg", "raw"}


def test_ping_needs_no_credentials(api: ApiServer) -> None:
    session = requests.Session()
    session.trust_env, session.verify = False, str(api.cert)
    response = session.get(api.url("/ping"), timeout=10)
    assert response.status_code == 200 and response.json() == {"msg": "pong"}


def test_concurrent_creation_of_one_login_yields_one_201(api: ApiServer) -> None:
    login = new_login()
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        session = requests.Session()
        session.trust_env = False
        session.auth, session.verify = api.session.auth, api.session.verify
        barrier.wait()
        statuses.append(session.post(api.url(f"/users/{login}"),
                                     json={"passwd": "secret1"}).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [422] * 7


def cli(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ops command line, on the API's data dir."""
    return subprocess.run([sys.executable, "-m", "tmail", *args], cwd=REPO, env=api.env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "login",
    [
        "/etc@x.org",  # Home would be /etc
        "../../../../tmp/x@x.org",  # Home would leave the mailboxes directory
        "x@",  # IndexError in home_for
        "@x.org",
        "a/b@x.org",  # '/' is atext (RFC 5321) but would be a directory here
        '"../../x"@x.org',  # a quoted local part
        '".."@x.org',
        "a@[127.0.0.1]",  # an address literal is no mailbox domain
        "a\u2028b@x.org",  # a line separator: atext for the parser, nothing for a path
    ],
)
def test_bad_logins_are_refused_alike_by_the_api_and_the_cli(api: ApiServer, login: str) -> None:
    if not login.startswith("/"):  # the router merges "//" in /users//etc@x.org: no way in
        response = api.session.post(api.url(f"/users/{quote(login, safe='@')}"),
                                    json={"passwd": "secret1", "haveMailbox": True})
        assert response.status_code == 422
        assert response.json()["raw"].startswith("login: ")
    done = cli(api, "users", "add", login, "--password", "secret1", "--mailbox")
    assert done.returncode == 65, done  # EX_DATAERR
    assert done.stderr.startswith("tmail: invalid input: login: ") and not done.stdout
    assert login not in [u["Login"] for u in api.session.get(api.url("/users")).json()]


@pytest.mark.parametrize("local", ["user", "first.last", "o'brien", "x+tag", "Ünïcode"])
def test_every_home_is_inside_the_mailboxes_directory(api: ApiServer, local: str) -> None:
    login = f"{local}{secrets.token_hex(2)}@home.test"
    done = cli(api, "users", "add", login, "--password", "secret1", "--mailbox")
    assert done.returncode == 0, done.stderr
    home = Path(api.session.get(api.url(f"/users/{quote(login)}")).json()["Home"])
    mailboxes = api.config.mailboxes_dir
    assert home.resolve().is_relative_to(mailboxes.resolve()) and home.name == login.split("@")[0]
    assert home.parent.parent.relative_to(mailboxes) == Path("h/home.test")
