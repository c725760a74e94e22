"""The listener's settings as a user gives them: the address, whether it may be remote, the SASL users.

Checked before anything listens, each with an error that says what to do:
a non-loopback address needs ``allow_remote`` (whoever reaches the port can
read and write the bus); the SASL users file must be a regular file owned by
this user with no permissions for group or others (it holds passwords).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from typing import NamedTuple

from shmbus.errors import InvalidArgumentError

ENV_LISTENER = "SHMBUS_KAFKA_LISTENER"


class ListenerSettings(NamedTuple):
    host: str
    port: int
    sasl_users: dict | None  # user -> password (SASL/PLAIN), or None: no authentication
    sasl_users_file: str | None


def parse_address(text: str, what: str = "a Kafka listener address", example: str = "127.0.0.1:9092"):
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ``what`` and ``example`` for the error."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"{what} is HOST:PORT, e.g. {example}: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_sasl_users(path: str) -> dict:
    """``user:password`` per line (``#`` starts a comment line); the file must be 0600 and ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise InvalidArgumentError(f"cannot open the SASL users file: {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgumentError(f"the SASL users file is not a regular file: {path}")
        if st.st_uid != os.geteuid():
            raise InvalidArgumentError(f"the SASL users file is owned by uid {st.st_uid}, not by this user "
                                       f"(uid {os.geteuid()}): {path}")
        if st.st_mode & 0o077:
            raise InvalidArgumentError(f"the SASL users file may be read by others (mode "
                                       f"{stat.S_IMODE(st.st_mode):04o}): {path} (chmod 600 {path})")
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            fd = -1
            text = f.read()
    finally:
        if fd >= 0:
            os.close(fd)
    users = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise InvalidArgumentError(f"the SASL users file has a line that is not user:password: {path} "
                                       f"line {n}")
        users[user] = password
    if not users:
        raise InvalidArgumentError(f"the SASL users file names no user: {path} (one user:password per line)")
    return users


def listener_settings(address: str, allow_remote: bool = False, sasl_users_file: str | None = None) \
        -> ListenerSettings:
    try:
        import kafka.protocol  # noqa: F401  (the schemas: the extra "kafka")
    except ImportError:
        raise InvalidArgumentError("the Kafka listener needs the extra 'kafka': pip install 'shmbus[kafka]'") from None
    host, port = parse_address(address)
    if not allow_remote and not is_loopback(host):
        raise InvalidArgumentError(f"the Kafka listener address is not a loopback address: {address} (whoever "
                                   f"reaches the port can read and write the bus; to listen there anyway, add "
                                   f"--kafka-listener-allow-remote, and consider --kafka-sasl-users)")
    users = read_sasl_users(sasl_users_file) if sasl_users_file else None
    return ListenerSettings(host, port, users, sasl_users_file)
