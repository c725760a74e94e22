"""A bus whose supervisor serves the Kafka protocol, for tests with real Kafka clients.

``start_listener(data_dir)`` starts the data dir's supervisor with a Kafka
listener on a free loopback port and returns ``host:port``. Stopping it is
the usual cleanup (``cleanup_bus``), which the fixtures run also when a test
fails.
"""

from __future__ import annotations

import contextlib
import os
import time


def start_listener(data_dir: str, *extra: str) -> str:
    from shmbus.client import control

    control.start(data_dir, args=("--kafka-listener", "127.0.0.1:0", *extra))
    return listener_address(data_dir)


def listener_address(data_dir: str, timeout_s: float = 10.0) -> str:
    from shmbus.client import control

    deadline = time.monotonic() + timeout_s
    while True:
        st = control.request(data_dir, {"cmd": "status"})
        k = st.get("kafka_listener")
        if k:
            return k["address"]
        if time.monotonic() > deadline:
            raise AssertionError(f"the supervisor of {data_dir} has no Kafka listener: {st}")
        time.sleep(0.05)


def listener_status(data_dir: str) -> dict:
    from shmbus.client import control

    return control.request(data_dir, {"cmd": "status"})["kafka_listener"]


def supervisor_log(data_dir: str) -> str:
    try:
        with open(os.path.join(data_dir, "supervisor.log")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


# --- raw Kafka requests over a socket (kafka-python's protocol classes build and read them) ---

def recv_exact(sock, n: int) -> bytes:
    """``n`` bytes from ``sock``; ConnectionError if the listener closes the connection first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_frame(sock) -> bytes:
    """One size-prefixed response frame (without its size)."""
    import struct

    (n,) = struct.unpack(">i", recv_exact(sock, 4))
    return recv_exact(sock, n)


# --- a Kafka cluster for tests of the Kafka backend and the bridge ---

@contextlib.contextmanager
def kafka_cluster():
    """``host:port`` of a Kafka cluster: ``$SHMBUS_TEST_KAFKA`` (a real one), else librdkafka's in-process mock
    cluster, which lives as long as the producer that made it (held here until the block ends)."""
    addr = os.environ.get("SHMBUS_TEST_KAFKA")
    if addr:
        yield addr
        return
    import confluent_kafka

    anchor = confluent_kafka.Producer({"test.mock.num.brokers": 1, "log_level": 0})
    b = next(iter(anchor.list_topics(timeout=30).brokers.values()))
    try:
        yield f"{b.host}:{b.port}"
    finally:
        anchor.flush(5)
        del anchor
