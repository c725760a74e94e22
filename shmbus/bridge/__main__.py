"""``python -m shmbus.bridge --data-dir D --name N``: one bridge's process (the supervisor starts it)."""

import sys

from shmbus.bridge.runner import main

sys.exit(main())
