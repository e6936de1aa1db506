"""Rater tokens and CSRF tokens.

A rater token is 32 random bytes (urlsafe base64) shown once by `sparrow rate add-rater`; the database
keeps only its SHA-256 (a high-entropy token needs no slow hash: there is nothing to brute-force). The
session cookie (Flask's signed cookie, key kept in the database so sessions survive a restart) holds the
rater id and a CSRF secret; every form carries that secret and every POST is refused without it.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh rater token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the database stores for `token`."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; False if either side is missing or empty."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def add_rater(store, name: str, admin: bool = False) -> str:
    """Create a rater named `name`; returns the token (the only time it exists in clear)."""
    name = name.strip()
    if not name or len(name) > 64:
        raise ValueError("a rater name must be 1-64 characters")
    token = new_token()
    store.add_rater(name, hash_token(token), admin)
    return token
