"""API keys and the JWT access/refresh tokens the HTTP API hands out.

The API key is long and random, so a SHA-256 of it is a safe thing to store
(a slow hash guards guessable passwords, which this is not). Tokens are HS256
JWTs signed with the install's own secret, which a new API key replaces (so
every older token, real or forged, stops working). A token that claims to last
longer than the configured lifetime, or to be issued in the future, is refused:
only a forger makes those. Refresh tokens rotate: each can be used once, and a
second use of one revokes its whole family, since only a thief replays an old
refresh token. One exception: a token used again within the reuse interval
(`ANKISYNC_REFRESH_REUSE_INTERVAL`, a minute) gets a new pair of the same family,
because two tabs of the userscript that cached the same token refresh at once.
"""

import hashlib
import hmac
import secrets
import sys
import time

import credentials
import db

ISSUER = "ankisync"
LEEWAY = 30  # seconds of clock skew tolerated between client and server

SCHEMA = """
CREATE TABLE IF NOT EXISTS ankisync_refresh_tokens (
    jti TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
)
"""


class TokenError(Exception):
    """A token that must be refused; the message is safe to show."""


def keep_jwt_light():
    """Keep PyJWT from loading cryptography's RSA and EC code in this process.

    We sign and check HS256 only (hmac from the standard library); PyJWT
    loads cryptography whenever it is installed (the worker's Google client
    brings it), which costs the web process 10 MB of its ~35. Call before the
    first token is made or checked.
    """
    sys.modules.setdefault("cryptography", None)


def init(db_path):
    db.connect(db_path).execute(SCHEMA)


def _hash(key):
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(cred_path):
    """Make a new API key, store its hash, void every token issued before.

    A new signing secret too: whoever read the old one (a backup, a leak) could
    otherwise forge tokens of the next generation.
    """
    key = "ak_" + secrets.token_urlsafe(32)
    data = credentials.ensure_signing_secret(cred_path)
    credentials.update(cred_path, api_key_sha256=_hash(key),
                       jwt_secret=secrets.token_urlsafe(48),
                       token_generation=data["token_generation"] + 1)
    return key


def check_api_key(stored, key):
    """Whether key matches the stored hash, compared in constant time."""
    expected = stored.get("api_key_sha256")
    return bool(expected) and hmac.compare_digest(expected, _hash(key))


def _token(stored, kind, ttl, jti, family=None):
    now = int(time.time())
    claims = {"iss": ISSUER, "iat": now, "exp": now + int(ttl), "type": kind,
              "jti": jti, "gen": stored["token_generation"]}
    if family:
        claims["fam"] = family
    import jwt  # here, not at the top: see keep_jwt_light
    return jwt.encode(claims, stored["jwt_secret"], algorithm="HS256")


def issue_pair(db_path, stored, access_ttl, refresh_ttl, family=None):
    """A new access and refresh token; the refresh token is recorded for rotation."""
    family = family or secrets.token_hex(8)
    refresh_jti = secrets.token_hex(16)
    with db.write(db_path) as conn:
        conn.execute("INSERT INTO ankisync_refresh_tokens VALUES (?, ?, ?, NULL)",
                     (refresh_jti, family, time.time() + refresh_ttl))
        conn.execute("DELETE FROM ankisync_refresh_tokens WHERE expires_at < ?", (time.time(),))
    return {
        "accessToken": _token(stored, "access", access_ttl, secrets.token_hex(16), family),
        "refreshToken": _token(stored, "refresh", refresh_ttl, refresh_jti, family),
    }


def verify(stored, token, kind, ttl):
    """The token's claims, or TokenError saying why it is refused.

    ttl: the lifetime this kind of token is issued with now (a setting).
    """
    if not token:
        raise TokenError("missing token: send it in the x-access-token header"
                         " or as Authorization: Bearer <token>")
    if "jwt_secret" not in stored:
        raise TokenError("no tokens have been issued yet: log in with the API key first")
    import jwt
    try:
        claims = jwt.decode(token, stored["jwt_secret"], algorithms=["HS256"], issuer=ISSUER,
                            leeway=LEEWAY, options={"require": ["exp", "iat", "iss", "jti"]})
    except jwt.ExpiredSignatureError:
        raise TokenError(f"{kind} token expired: get a new one") from None
    except jwt.InvalidTokenError:
        raise TokenError(f"invalid {kind} token") from None
    if claims.get("type") != kind:
        raise TokenError(f"this is not an {kind} token" if kind == "access"
                         else f"this is not a {kind} token")
    if claims.get("gen") != stored["token_generation"]:
        raise TokenError("token issued before the API key was changed: log in again")
    iat, exp = claims["iat"], claims["exp"]
    if (not isinstance(iat, int) or iat > time.time() + LEEWAY
            or exp - iat > ttl + LEEWAY):  # PyJWT checks exp and iat are numbers
        raise TokenError(f"invalid {kind} token: it claims a lifetime this server never"
                         " issues; log in again")
    return claims


def rotate(db_path, stored, token, access_ttl, refresh_ttl, reuse_interval):
    """Swap a refresh token for a new pair; a reused one revokes its family,
    unless it was first used less than reuse_interval seconds ago."""
    claims = verify(stored, token, "refresh", refresh_ttl)
    now = time.time()
    with db.write(db_path) as conn:
        row = conn.execute("SELECT family, used_at FROM ankisync_refresh_tokens WHERE jti = ?",
                           (claims["jti"],)).fetchone()
        if row is None:
            raise TokenError("refresh token revoked or unknown: log in again")
        stolen = row["used_at"] is not None and now - row["used_at"] > reuse_interval
        if stolen:
            conn.execute("DELETE FROM ankisync_refresh_tokens WHERE family = ?", (row["family"],))
        elif row["used_at"] is None:
            conn.execute("UPDATE ankisync_refresh_tokens SET used_at = ? WHERE jti = ?",
                         (now, claims["jti"]))
    if stolen:
        raise TokenError("refresh token already used: every token of this login is revoked,"
                         " log in again with the API key")
    return issue_pair(db_path, stored, access_ttl, refresh_ttl, family=row["family"])
