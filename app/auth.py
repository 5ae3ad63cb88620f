"""HTTP Basic authentication of the admin, as tmail's API does it.

The admin credential comes from the configuration and is compared in constant time; no
password hash is computed per request, so authentication costs microseconds.
"""

from __future__ import annotations

import hmac

from flask_httpauth import HTTPBasicAuth

from app.errors import error_response
from app.services import services

auth = HTTPBasicAuth(realm="tmail")


@auth.verify_password
def verify_password(username: str, password: str) -> str | None:
    config = services().config
    user_ok = hmac.compare_digest(username.encode(), config.admin_user.encode())
    password_ok = hmac.compare_digest(password.encode(), config.admin_password.encode())
    return username if user_ok and password_ok else None


@auth.error_handler
def unauthorized(status: int):  # type: ignore[no-untyped-def]
    return error_response(status, "authentication required", "valid admin credentials needed")
