"""Which Kafka API each handler answers, and in which versions.

A handler is ``fn(session, request) -> response | None``: ``request`` is the
decoded kafka-python message (its version: ``request.API_VERSION``), the
response a message of the paired response class; the server encodes it at the
request's version and with its correlation id. ``None``: no response (a
Produce with ``acks=0``). A handler runs in its connection's thread and may
block (a Fetch's long poll). It answers errors with Kafka's error codes in
the response; raising :class:`MalformedRequest` closes the connection (the
request cannot be answered); any other exception is logged and closes the
connection too.

ApiVersions lists exactly what is registered here: an API or version that is
not registered is not offered, so clients fall back or say so.
"""

from __future__ import annotations

from typing import Callable, NamedTuple


class MalformedRequest(Exception):
    """A request that cannot be answered (bad sizes, truncated, inconsistent): close the connection."""


class Handler(NamedTuple):
    api_key: int
    min_version: int
    max_version: int
    request: type
    response: type
    fn: Callable
    needs_auth: bool


HANDLERS: dict[int, Handler] = {}


def handles(request_cls, response_cls, min_version: int, max_version: int, *, needs_auth: bool = True):
    """Register the decorated function as the handler of ``request_cls``'s API, versions min..max."""
    max_version = min(max_version, request_cls.max_version, response_cls.max_version)

    def register(fn):
        key = request_cls.API_KEY
        if key in HANDLERS:
            raise RuntimeError(f"two handlers for api_key={key}")
        HANDLERS[key] = Handler(key, min_version, max_version, request_cls, response_cls, fn, needs_auth)
        return fn

    return register


def api_version_entries() -> list:
    """ApiVersions' list: every registered API with its versions."""
    from kafka.protocol.metadata import ApiVersionsResponse

    return [ApiVersionsResponse.ApiVersion(api_key=h.api_key, min_version=h.min_version, max_version=h.max_version)
            for h in sorted(HANDLERS.values())]
