"""HTTP Basic authentication of the admin, as tmail's API does it.

The admin credential comes from the configuration and is compared in constant time; no
password hash is computed per request, so authentication costs microseconds. Failed sign-ins
are counted per client IP (:mod:`app.throttle`): past the limit, the client gets ``429 Too
Many Requests`` with ``Retry-After`` (RFC 6585) and its credentials are not even looked at.
429 rather than 401: the answer is "not now", whatever the credentials, and a 401 would tell
the client to try other ones.
"""

from __future__ import annotations

import hmac

from flask import request
from flask_httpauth import HTTPBasicAuth

from app.errors import ApiError, error_response
from app.services import services
from tmail.config import Config

auth = HTTPBasicAuth(realm="tmail")


def admin_credentials_ok(config: Config, username: str, password: str) -> bool:
    """The one check of the admin credential, for the API's Basic auth and the console's
    sign-in form: constant time, both parts always compared."""
    user_ok = hmac.compare_digest(username.encode(), config.admin_user.encode())
    password_ok = hmac.compare_digest(password.encode(), config.admin_password.encode())
    return user_ok and password_ok


@auth.verify_password
def verify_password(username: str, password: str) -> str | None:
    tmail = services()
    client = request.remote_addr or ""
    wait = tmail.throttle.retry_after(client)
    if wait:
        raise ApiError(429, "too many failed sign-ins", f"retry after {wait} seconds",
                       headers={"Retry-After": str(wait)})
    if admin_credentials_ok(tmail.config, username, password):
        tmail.throttle.succeeded(client)
        return username
    if request.authorization is not None:  # a request without credentials guesses nothing
        tmail.throttle.failed(client)
    return None


@auth.error_handler
def unauthorized(status: int):  # type: ignore[no-untyped-def]
    return error_response(status, "authentication required", "valid admin credentials needed")
