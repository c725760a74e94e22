"""The Kafka listener: a TCP socket, one thread per connection, requests answered in order.

Every byte from the socket is hostile until decoded: a frame's length must be
at least a request header's and at most ``max_request_bytes``; the header's
API and version must be registered (``registry.py``); the body must decode
with the API's schema to its last byte. A request that fails any of that
closes its connection, with the reason in the supervisor's log; nothing else
is touched (handlers only run on requests that decoded). Connections beyond
``max_connections`` are closed as they are accepted, and logged. With SASL,
a connection must authenticate within ``AUTH_TIMEOUT_S`` of connecting or
it is closed (it holds a connection slot meanwhile).

Two session fields let a handler steer the connection (SASL uses both):
``close_after_response`` (a reason): the connection is closed once the
response is sent, and the reason logged (a failed authentication);
``raw_frame`` (``(fn, max_bytes)``): the next frame is not a Kafka request
but raw bytes (at most ``max_bytes``) for ``fn(session, payload) -> bytes |
None``, whose result is sent back with a 4-byte length (SaslHandshake v0's
raw SASL token).

Kafka answers one request of a connection at a time, in order, and clients
rely on it (a consumer's long-polling Fetch delays the requests behind it on
that connection, and librdkafka keeps its coordinator on another). So each
connection has its own thread that reads a request, runs its handler (which
may block, as a Fetch waiting for records does) and writes the response.
"""

from __future__ import annotations

import io
import re
import socket
import struct
import threading
import time
import traceback
from collections import deque

from kafka.protocol.metadata import ApiVersionsResponse

from shmbus.kafka import handlers  # noqa: F401  (registers every handler)
from shmbus.kafka.broker import Broker
from shmbus.kafka.registry import HANDLERS, MalformedRequest, api_version_entries

MAX_REQUEST_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
MAX_CONNECTIONS = 256
IDLE_TIMEOUT_S = 600.0  # Kafka's connections.max.idle.ms
AUTH_TIMEOUT_S = 30.0  # with SASL: a connection not authenticated by then is closed (it holds a connection slot)
RATE_WINDOW_S = 10  # status() rates: over the last this many seconds (sampled once a second)
API_VERSIONS = 18
UNSUPPORTED_VERSION = 35
_HEAD = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length


RATE_KEYS = ("requests", "produced_records", "produced_bytes", "fetched_records", "fetched_bytes")


class ConnectionClosed(Exception):
    pass


class _CloseAfterResponse(Exception):
    """A handler asked to close the connection once its response is out (``Session.close_after_response``)."""


class Session:
    """One client connection: who it is, and what its closing must undo.

    ``on_close``: callables run when the connection ends, however it ends
    (a group member's connection closing removes it from its group at once).
    """

    def __init__(self, listener: "KafkaListener", sock: socket.socket, peer):
        self.listener = listener
        self.broker: Broker = listener.broker
        self.sock = sock
        self.peer = peer
        self.client_id = None
        self.authenticated = listener.sasl_users is None
        self.principal = None
        self.on_close: list = []
        self.state: dict = {}  # per-connection state that handler modules keep (keyed by module)
        self.close_after_response: str | None = None  # a reason: close once the response is sent
        self.raw_frame = None  # (fn, max_bytes): the next frame is raw bytes for fn (SaslHandshake v0)

    def __repr__(self) -> str:
        return f"peer={self.peer[0]}:{self.peer[1]} client_id={self.client_id!r}"


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionClosed("the client closed the connection" if got == 0 else
                                   f"the client closed the connection inside a frame ({got} of {n} bytes)")
        got += k
    return buf


class KafkaListener:
    """Serves the Kafka protocol on ``host:port`` for a bus (``port=0``: any free port; see ``port``)."""

    def __init__(self, data_dir: str, host: str, port: int, *, log=print, coordinator=None, sasl_users=None,
                 max_connections: int = MAX_CONNECTIONS, max_request_bytes: int = MAX_REQUEST_BYTES,
                 auto_create: bool = True, num_partitions: int = 1):
        self.log = log
        self.sasl_users = sasl_users  # {user: password} (SASL/PLAIN), or None: no authentication
        self.max_connections = max_connections
        self.max_request_bytes = max_request_bytes
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.host, self.port = host, self.sock.getsockname()[1]
        self.broker = Broker(data_dir, self.host, self.port, log=log, coordinator=coordinator,
                             auto_create=auto_create, num_partitions=num_partitions)
        self.sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._thread = None
        self._closed = False
        self.started = time.time()
        self._samples: deque = deque(maxlen=RATE_WINDOW_S + 1)  # (monotonic time, counters), once a second

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        from shmbus.kernels import kafka_in, kafka_out

        kafka_in.warm()  # compiled (or loaded) now, not by the first Produce or Fetch
        kafka_out.warm()
        self._thread = threading.Thread(target=self._accept_loop, name="kafka-listener", daemon=True)
        self._thread.start()
        threading.Thread(target=self._sample_loop, name="kafka-rates", daemon=True).start()

    def close(self) -> None:
        """Stop accepting, close every connection (their closing hooks run), release the broker."""
        if self._closed:
            return
        self._closed = True
        self.broker.closing.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            sessions = list(self.sessions)
        for s in sessions:
            try:
                s.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        self.broker.close()

    def status(self) -> dict:
        """The listener's figures: counters since it started, and ``rates`` (per second, over the last
        ``rates["window_s"]`` seconds, at most RATE_WINDOW_S; None until a second has passed)."""
        c = self.broker.counters.as_dict()
        return {**c, "address": self.address, "connections": len(self.sessions), "sasl": self.sasl_users is not None,
                "max_connections": self.max_connections, "rates": self._rates(c)}

    def _sample_loop(self) -> None:
        while not self.broker.closing.is_set():
            self._samples.append((time.monotonic(), self.broker.counters.as_dict()))
            self.broker.closing.wait(1.0)

    def _rates(self, now_counters: dict) -> dict:
        try:
            t0, c0 = self._samples[0]
        except IndexError:
            return {"window_s": None}
        dt = time.monotonic() - t0
        out = {"window_s": round(dt, 3)}
        for key in RATE_KEYS:
            out[f"{key}_per_s"] = round((now_counters[key] - c0[key]) / dt, 3) if dt >= 0.5 else None
        return out

    # --- connections ---
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self.sock.accept()
            except OSError as e:
                if self._closed:
                    return
                self.log(f"kafka listener: accept failed, retrying: {type(e).__name__}: {e}")
                time.sleep(0.05)
                continue
            with self._lock:
                full = len(self.sessions) >= self.max_connections
            if full:
                self.broker.counters.refused += 1
                self.log(f"kafka listener: refused a connection from {peer[0]}:{peer[1]}: "
                         f"{self.max_connections} connections open already")
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(IDLE_TIMEOUT_S)
            s = Session(self, conn, peer)
            with self._lock:
                self.sessions.add(s)
            self.broker.counters.connections_total += 1
            threading.Thread(target=self._serve, args=(s,), name="kafka-conn", daemon=True).start()

    def _serve(self, s: Session) -> None:
        reason = None
        try:
            auth_deadline = time.monotonic() + AUTH_TIMEOUT_S
            while not self._closed:
                if not s.authenticated:  # with SASL: a deadline for the whole exchange, not per read
                    s.sock.settimeout(max(auth_deadline - time.monotonic(), 0.001))
                head = _recv_exact(s.sock, 4)
                (size,) = struct.unpack(">i", head)
                if s.raw_frame is not None:
                    self._raw(s, size)
                else:
                    if size < _HEAD.size or size > self.max_request_bytes:
                        raise MalformedRequest(f"request size {size} outside {_HEAD.size}.."
                                               f"{self.max_request_bytes}")
                    self._request(s, _recv_exact(s.sock, size))
                if s.close_after_response is not None:
                    raise _CloseAfterResponse(s.close_after_response)
                if s.authenticated and s.sock.gettimeout() != IDLE_TIMEOUT_S:
                    s.sock.settimeout(IDLE_TIMEOUT_S)
        except ConnectionClosed:
            pass
        except _CloseAfterResponse as e:
            reason = str(e)
        except MalformedRequest as e:
            reason = f"malformed request: {e}"
        except socket.timeout:
            reason = (f"idle for {IDLE_TIMEOUT_S:.0f} s" if s.authenticated else
                      f"not authenticated within {AUTH_TIMEOUT_S:.0f} s of connecting")
        except OSError as e:
            if not self._closed:
                reason = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 (a bug in a handler: this connection ends, the listener goes on)
            reason = f"internal error: {type(e).__name__}: {e}\n{traceback.format_exc()}"
        finally:
            if reason is not None and not self._closed:
                self.log(f"kafka listener: closed connection {s}: {reason}")
            for fn in reversed(s.on_close):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    self.log(f"kafka listener: cleaning up after {s} failed: {type(e).__name__}: {e}")
            try:
                s.sock.close()
            except OSError:
                pass
            with self._lock:
                self.sessions.discard(s)

    def _request(self, s: Session, frame: bytearray) -> None:
        api_key, version, correlation_id, cid_len = _HEAD.unpack_from(frame, 0)
        h = HANDLERS.get(api_key)
        if h is None:
            raise MalformedRequest(f"api_key={api_key} is not supported (not offered in ApiVersions)")
        if cid_len > 0:
            if _HEAD.size + cid_len > len(frame):
                raise MalformedRequest("client_id runs past the end of the request")
            s.client_id = bytes(frame[_HEAD.size: _HEAD.size + cid_len]).decode("utf-8", "replace")
        if not h.min_version <= version <= h.max_version:
            if api_key == API_VERSIONS:  # Kafka answers this one, at v0, so the client can pick a version
                self._send(s, _unsupported_api_versions(), correlation_id, 0)
                return
            raise MalformedRequest(f"api_key={api_key} version={version} is not supported "
                                   f"(versions {h.min_version}..{h.max_version} are)")
        if h.needs_auth and not s.authenticated:
            raise MalformedRequest(f"api_key={api_key} before SASL authentication")
        req = decode_request(h.request, frame, version)
        self.broker.counters.requests += 1
        resp = h.fn(s, req)
        if resp is not None:
            self._send(s, resp, correlation_id, version)

    def _raw(self, s: Session, size: int) -> None:
        fn, limit = s.raw_frame
        s.raw_frame = None
        if not 0 <= size <= limit:
            raise MalformedRequest(f"raw SASL token size {size} outside 0..{limit}")
        reply = fn(s, bytes(_recv_exact(s.sock, size)))
        if reply is not None:
            s.sock.sendall(struct.pack(">i", len(reply)) + reply)

    def _send(self, s: Session, resp, correlation_id: int, version: int) -> None:
        resp.API_VERSION = version
        resp.with_header(correlation_id=correlation_id)
        s.sock.sendall(resp.encode(header=True, framed=True))


def decode_request(cls, frame, version: int):
    """The request in ``frame`` (header and body); a body that runs past the frame's end is malformed.

    kafka-python's ``decode`` does not say where the body ended, and a
    string whose length runs past the end decodes short instead of failing.
    Its compiled decoder (``cls._struct``, kafka-python 3's) returns the end
    position: beyond the frame's length is a truncated request. Bytes after
    the body are ignored: librdkafka 2.16's Metadata v12 request carries three
    that kafka-python's schema does not read.
    """
    data = memoryview(frame)
    if not hasattr(getattr(cls, "_struct", None), "compiled_decode_from"):  # another kafka-python: its own decode (truncated strings decode short)
        try:
            return cls.decode(data, version=version, header=True)
        except Exception as e:  # noqa: BLE001 (any failure to decode hostile bytes)
            raise MalformedRequest(f"api_key={cls.API_KEY} version={version} does not decode: "
                                   f"{type(e).__name__}: {e}") from None
    try:
        hdr_data = io.BytesIO(bytes(data))
        hdr = cls.parse_header(hdr_data, version=version)
        flexible = cls.flexible_version_q(version)
        fast_decode = cls._struct.compiled_decode_from(version, compact=flexible, tagged=flexible,
                                                        data_class=cls[None])
        req, end = fast_decode(data, hdr_data.tell())
    except Exception as e:  # noqa: BLE001 (any failure to decode hostile bytes)
        raise MalformedRequest(f"api_key={cls.API_KEY} version={version} does not decode: "
                               f"{type(e).__name__}: {e}") from None
    if end > len(data):
        raise MalformedRequest(f"api_key={cls.API_KEY} version={version} is truncated: its body needs "
                               f"{end} bytes, the request has {len(data)}")
    req._header = hdr
    where = null_where_not_allowed(req, cls.json["fields"], version)
    if where is not None:
        raise MalformedRequest(f"api_key={cls.API_KEY} version={version} has a null {where}, which its schema does "
                               f"not allow")
    return req


_VERSIONS_CACHE: dict = {}


def _in_versions(spec, version: int) -> bool:
    """Whether ``version`` is in a JSON schema version range ("3+", "0-4", "5", "none", None)."""
    r = _VERSIONS_CACHE.get(spec)
    if r is None:
        if spec is None or spec.strip() in ("", "none"):
            r = (0, -1)
        elif spec.endswith("+"):
            r = (int(spec[:-1]), 1 << 15)
        elif "-" in spec:
            lo, hi = spec.split("-")
            r = (int(lo), int(hi))
        else:
            r = (int(spec), int(spec))
        _VERSIONS_CACHE[spec] = r
    return r[0] <= version <= r[1]


def null_where_not_allowed(obj, fields, version: int) -> str | None:
    """The path of a null string, bytes, records, array or struct that the schema does not make nullable.

    kafka-python decodes a length of -1 as None whatever the schema says; the
    handlers can then trust that only nullable fields are ever None.
    """
    for f in fields:
        if "tag" in f or not _in_versions(f.get("versions"), version):
            continue
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", f["name"]).lower()
        v = getattr(obj, name, None)
        if v is None:
            t = f["type"]
            if (t.startswith("[]") or t in ("string", "bytes", "records") or "fields" in f) \
                    and not _in_versions(f.get("nullableVersions"), version):
                return name
            continue
        sub = f.get("fields")
        if sub:
            for item in (v if f["type"].startswith("[]") else (v,)):
                if item is None:
                    return name
                where = null_where_not_allowed(item, sub, version)
                if where is not None:
                    return f"{name}.{where}"
    return None


def _unsupported_api_versions():
    return ApiVersionsResponse[0](error_code=UNSUPPORTED_VERSION, api_keys=api_version_entries())
