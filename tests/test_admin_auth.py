"""The admin credential: never empty, and guessing it is throttled per client IP for every
gunicorn worker at once."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import sys
from pathlib import Path

from app.throttle import MAX_FAILURES, WINDOW
from tests.conftest import REPO, start_api, stop, tmail_env


def test_an_empty_admin_password_stops_gunicorn_naming_the_variable(tmp_path: Path) -> None:
    env = tmail_env(tmp_path, TMAIL_ADMIN_PASSWORD="", TMAIL_API_BIND="127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TMAIL_ADMIN_PASSWORD must not be empty" in done.stderr


def get_users(base_url: str, cert: Path, password: str | None,
              source: str) -> http.client.HTTPResponse:
    """One request on a connection of its own (so that both workers get some), from
    ``source``: any 127.x address is a distinct client on loopback."""
    host, port = base_url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30,
                                       source_address=(source, 0))
    headers = {"Connection": "close"}
    if password is not None:
        token = base64.b64encode(f"admin:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn.request("GET", "/users", headers=headers)
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def test_failed_sign_ins_are_throttled_per_client_ip_across_workers(tmp_path: Path) -> None:
    server = start_api(tmp_path)
    try:
        for _ in range(MAX_FAILURES):
            assert get_users(server.base_url, server.cert, "guess", "127.0.0.1").status == 401
        # Now even the right password is not looked at, on any worker, for a while.
        for _ in range(4):
            blocked = get_users(server.base_url, server.cert, "admin", "127.0.0.1")
            assert blocked.status == 429
            assert 0 < int(blocked.headers["Retry-After"]) <= WINDOW
            body = json.loads(blocked.body)  # type: ignore[attr-defined]
            assert blocked.headers["Content-Type"] == "application/json; charset=UTF-8"
            assert set(body) == {"msg", "raw"} and "retry after" in body["raw"]
        # Another client is not hurt, and a success forgets its own failures.
        for _ in range(MAX_FAILURES - 1):
            assert get_users(server.base_url, server.cert, "guess", "127.0.0.2").status == 401
        assert get_users(server.base_url, server.cert, "admin", "127.0.0.2").status == 200
        assert get_users(server.base_url, server.cert, "guess", "127.0.0.2").status == 401
        assert get_users(server.base_url, server.cert, "admin", "127.0.0.2").status == 200
        # Requests without credentials (a client's first probe) are not guesses.
        for _ in range(MAX_FAILURES + 1):
            assert get_users(server.base_url, server.cert, None, "127.0.0.3").status == 401
        assert get_users(server.base_url, server.cert, "admin", "127.0.0.3").status == 200
    finally:
        stop(server.process)
