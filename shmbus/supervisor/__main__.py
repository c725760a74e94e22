"""``python -m shmbus.supervisor --data-dir DIR``: what ``shmbus serve`` runs."""

import argparse
import sys

from shmbus.supervisor.daemon import serve


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m shmbus.supervisor")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    from shmbus.core.paths import resolve_data_dir

    return serve(resolve_data_dir(args.data_dir))


if __name__ == "__main__":
    sys.exit(main())
