"""Which Kafka APIs a broker serves: one ApiVersions (v0) request over a plain socket.

librdkafka learns the broker's API versions but does not expose them; an admin call
for an API the broker lacks only times out. The bus asks once, so that such a call
fails at once with an error naming the API. Used only with ``security.protocol``
plaintext (with TLS or SASL the answer is unknown and calls go to the broker as they are).
"""

from __future__ import annotations

import socket
import struct

API_KEYS = {
    "CreateTopics": 19, "DeleteTopics": 20, "DescribeConfigs": 32, "IncrementalAlterConfigs": 44,
    "ListGroups": 16, "DescribeGroups": 15, "OffsetFetch": 9, "OffsetCommit": 8, "JoinGroup": 11,
}


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _read(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed during ApiVersions")
        out += chunk
    return out


def api_versions(address: str, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """{api key: (min version, max version)} of the broker at ``host:port``; raises OSError."""
    host, port = split_address(address)
    client = b"shmbus-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read(sock, 4))
        if not 6 <= size <= 1 << 20:
            raise ConnectionError(f"bad ApiVersions answer: size={size}")
        data = _read(sock, size)
    _corr, err, n = struct.unpack_from(">ihi", data, 0)
    if err or not 0 <= n <= 1000 or len(data) < 10 + 6 * n:
        raise ConnectionError(f"bad ApiVersions answer: error={err} apis={n}")
    return {k: (lo, hi) for k, lo, hi in struct.iter_unpack(">hhh", data[10: 10 + 6 * n])}
