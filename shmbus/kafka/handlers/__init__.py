"""The handlers, one module per family of Kafka APIs; importing this package registers them all."""

from shmbus.kafka.handlers import admin, fetch, groups, metadata, produce, sasl  # noqa: F401
