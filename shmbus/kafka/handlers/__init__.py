"""The handlers, one module per family of Kafka APIs; importing this package registers them all."""

from shmbus.kafka.handlers import groups  # noqa: F401
from shmbus.kafka.handlers import metadata  # noqa: F401
