"""``python -m shmbus ...`` is the ``shmbus`` command."""

from shmbus.cli.main import main

main()
