"""Every curl example of tmail's API document, run with the real curl binary."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import ApiServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

CREATE = '{"passwd": "mot de passe", "authRelay": true, "haveMailbox": true, "mailboxQuota": "1G"}'


def curl(api: ApiServer, *args: str) -> tuple[int, bytes]:
    """Run curl like the seed does (-u admin:admin) and return (status, body)."""
    proc = subprocess.run(
        ["curl", "-sS", "--cacert", str(api.cert), "-u", "admin:admin",
         "-w", "\n%{http_code}", *args],
        capture_output=True, check=True, timeout=30,
    )
    body, _, status = proc.stdout.rpartition(b"\n")
    return int(status), body


def test_seed_examples_in_order(api: ApiServer) -> None:
    url = api.base_url
    status, _ = curl(api, "-H", "Content-Type: application/json", "-X", "POST", "-d", CREATE,
                     f"{url}/users/test@tmail.io")
    assert status == 201

    status, body = curl(api, "-H", "Content-Type: application/json", "-X", "POST", "-d", CREATE,
                        f"{url}/users/test@tmail.io")
    assert status == 422
    assert json.loads(body) == {"msg": "unable to create new user",
                                "raw": "UNIQUE constraint failed: users.login"}

    status, body = curl(api, f"{url}/users/test@tmail.io")
    user = json.loads(body)
    assert status == 200 and user["Login"] == "test@tmail.io" and user["Active"] == "Y"
    assert user["Home"].endswith("/t/tmail.io/t/test")

    status, body = curl(api, f"{url}/users")
    assert status == 200 and "test@tmail.io" in [u["Login"] for u in json.loads(body)]

    status, _ = curl(api, "-X", "DELETE", f"{url}/users/test@tmail.io")
    assert status == 200

    status, body = curl(api, f"{url}/queue")
    assert status == 200 and isinstance(json.loads(body), list)

    status, body = curl(api, f"{url}/queue/999999")
    assert status == 404 and json.loads(body)["msg"] == "no such message ID"

    for path in ("/queue/discard/999999", "/queue/bounce/999999"):
        status, body = curl(api, "-X", "DELETE", url + path)
        assert status == 404 and set(json.loads(body)) == {"msg", "raw"}
