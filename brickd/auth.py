"""The brick's credentials: who may open a connection to it.

The auth file is JSON ``{"username": str, "password": str}``, written by the
management daemon when it creates a volume and passed to the brick with
``--auth-file``. It should be readable by root only; a brick started without
one accepts any credentials (tests, single-user setups).
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from dataclasses import dataclass
from typing import Any


class AuthFileError(Exception):
    """The auth file cannot be used; the message says why, for an operator."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def accepts(self, auth: Any) -> bool:
        """True when a hello's ``auth`` value carries exactly these credentials.

        Compares in constant time, so a refusal's timing does not reveal how
        much of a guess was right.
        """
        if type(auth) is not dict:
            return False
        user, password = auth.get("username"), auth.get("password")
        if type(user) is not str or type(password) is not str:
            return False
        ok_user = hmac.compare_digest(user.encode(), self.username.encode())
        ok_pass = hmac.compare_digest(password.encode(), self.password.encode())
        return ok_user and ok_pass


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    """Read and check an auth file; AuthFileError with the reason if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise AuthFileError(f"auth file {path} is not a regular file")
            text = f.read(65536)
    except FileNotFoundError:
        raise AuthFileError(f"auth file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AuthFileError(f"auth file {path} cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise AuthFileError(f"auth file {path} is not valid JSON: {e}") from None
    if type(data) is not dict:
        raise AuthFileError(f"auth file {path} must hold a JSON object")
    user, password = data.get("username"), data.get("password")
    if type(user) is not str or not user or type(password) is not str or not password:
        raise AuthFileError(
            f"auth file {path} must hold non-empty string fields \"username\" and \"password\""
        )
    return Credentials(user, password)


def write_credentials(path: str | os.PathLike[str], creds: Credentials) -> None:
    """Write an auth file readable by its owner only (for mgmt and tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"username": creds.username, "password": creds.password}, f)
