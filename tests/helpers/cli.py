"""Running the ``shmbus`` command line against a data dir."""

from __future__ import annotations

import os
import subprocess
import sys


def sh(data_dir, *args, stdin=None, timeout=60):
    env = dict(os.environ, SHMBUS_DATA_DIR=data_dir)
    return subprocess.run([sys.executable, "-m", "shmbus", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_line_error(r):
    """The one line a user error prints (exit 1, no traceback)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]
