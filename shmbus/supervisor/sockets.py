"""The supervisor's listening sockets: Unix domain sockets in the data dir, mode 0600."""

from __future__ import annotations

import os
import socket


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A listening Unix socket at ``path`` that only its owner may connect to (a stale file is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(backlog)
    return s


__all__ = ["listen_unix"]
