"""SaslHandshake and SaslAuthenticate: SASL/PLAIN against the listener's users file.

With ``--kafka-sasl-users FILE`` a connection must authenticate before any
request but ApiVersions, SaslHandshake and SaslAuthenticate (the server
closes a connection that asks anything else first). The one mechanism is
PLAIN: the client sends ``authzid NUL user NUL password``; the authzid must
be empty or the user. Passwords are compared in constant time
(:func:`hmac.compare_digest`). Clients: librdkafka and confluent-kafka with
``security.protocol=SASL_PLAINTEXT``, ``sasl.mechanism=PLAIN``;
kafka-python with ``security_protocol='SASL_PLAINTEXT'``,
``sasl_mechanism='PLAIN'``. PLAIN sends the password as it is: on a
non-loopback listener, put TLS in front (a TLS-terminating proxy).

The exchange:

- SaslHandshake v1 then SaslAuthenticate (v0-v2): what current clients do.
- SaslHandshake v0 then one raw SASL token (a 4-byte length and the PLAIN
  bytes, no Kafka header), answered with an empty raw token: what clients
  older than Kafka 1.0 do. A failure closes the connection without an answer,
  as Kafka does.

A failed authentication answers SASL_AUTHENTICATION_FAILED and closes the
connection after the response; a mechanism other than PLAIN answers
UNSUPPORTED_SASL_MECHANISM listing PLAIN, and closes; a handshake or
authentication out of turn (twice, or SaslAuthenticate before SaslHandshake,
or on a listener without SASL) answers ILLEGAL_SASL_STATE, and closes. Every
failure is in the supervisor's log with the peer and the user (never the
password). A session does not expire (``session_lifetime_ms`` 0).
"""

from __future__ import annotations

import hmac

from kafka.protocol.sasl import (
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
)

from shmbus.kafka.handlers import errors as E
from shmbus.kafka.registry import handles

MECHANISMS = ["PLAIN"]
MAX_RAW_TOKEN = 64 * 1024  # a SaslHandshake v0 raw token larger than this closes the connection
FAILED = "Authentication failed: invalid username or password (SASL/PLAIN)"
_DUMMY = b"\0" * 32


def _state(session) -> dict:
    return session.state.setdefault(__name__, {})


def check_plain(users: dict, token: bytes) -> tuple[str | None, str]:
    """(user, "") if ``token`` is a PLAIN response with a right password, else (None, why) (why: for the log)."""
    if token is None:
        return None, "no SASL/PLAIN token (auth_bytes is null)"
    parts = bytes(token).split(b"\0")
    if len(parts) != 3:
        return None, "the PLAIN token is not authzid NUL user NUL password"
    try:
        authzid, user, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None, "the PLAIN token is not UTF-8"
    if authzid and authzid != user:
        return None, f"user {user!r} asked to act as {authzid!r} (not supported)"
    stored = users.get(user)
    expected = _DUMMY if stored is None else stored.encode("utf-8")
    ok = hmac.compare_digest(password.encode("utf-8"), expected)  # constant time for equal lengths
    if stored is None:
        return None, f"unknown user {user!r}"
    if not ok:
        return None, f"wrong password for user {user!r}"
    return user, ""


def _refuse(session, why: str) -> None:
    session.close_after_response = f"SASL: {why}"


@handles(SaslHandshakeRequest, SaslHandshakeResponse, 0, 1, needs_auth=False)
def sasl_handshake(session, req):
    st = _state(session)
    users = session.listener.sasl_users
    if users is None:
        _refuse(session, "SaslHandshake on a listener without SASL (start it with --kafka-sasl-users FILE)")
        return SaslHandshakeResponse(error_code=E.ILLEGAL_SASL_STATE, mechanisms=[])
    if session.principal is not None or "mechanism" in st:
        _refuse(session, "SaslHandshake twice on one connection")
        return SaslHandshakeResponse(error_code=E.ILLEGAL_SASL_STATE, mechanisms=MECHANISMS)
    if req.mechanism != "PLAIN":
        _refuse(session, f"mechanism {req.mechanism!r} asked; only PLAIN is offered")
        return SaslHandshakeResponse(error_code=E.UNSUPPORTED_SASL_MECHANISM, mechanisms=MECHANISMS)
    st["mechanism"] = "PLAIN"
    if req.API_VERSION == 0:
        session.raw_frame = (_raw_plain, MAX_RAW_TOKEN)
    return SaslHandshakeResponse(error_code=E.NONE, mechanisms=MECHANISMS)


def _raw_plain(session, token: bytes) -> bytes | None:
    """The raw token after a SaslHandshake v0: an empty token back on success; on failure close, no answer."""
    user, why = check_plain(session.listener.sasl_users, token)
    if user is None:
        _refuse(session, f"authentication failed: {why}")
        return None
    session.authenticated = True
    session.principal = user
    return b""


@handles(SaslAuthenticateRequest, SaslAuthenticateResponse, 0, 2, needs_auth=False)
def sasl_authenticate(session, req):
    st = _state(session)
    R = SaslAuthenticateResponse
    users = session.listener.sasl_users
    if users is None or st.get("mechanism") != "PLAIN" or session.principal is not None:
        why = ("SaslAuthenticate on a listener without SASL" if users is None else
               "SaslAuthenticate after authenticating already" if session.principal is not None else
               "SaslAuthenticate before SaslHandshake")
        _refuse(session, why)
        return R(error_code=E.ILLEGAL_SASL_STATE, error_message=why, auth_bytes=b"", session_lifetime_ms=0)
    user, why = check_plain(users, req.auth_bytes)
    if user is None:
        _refuse(session, f"authentication failed: {why}")
        return R(error_code=E.SASL_AUTHENTICATION_FAILED, error_message=FAILED, auth_bytes=b"",
                 session_lifetime_ms=0)
    session.authenticated = True
    session.principal = user
    return R(error_code=E.NONE, error_message=None, auth_bytes=b"", session_lifetime_ms=0)
