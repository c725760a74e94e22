"""confluent_kafka (librdkafka), imported when a Kafka-cluster bus is made, never by ``import shmbus``."""

from __future__ import annotations


def load_confluent():
    """confluent_kafka, or ImportError saying which extra brings it."""
    try:
        import confluent_kafka
    except ImportError:
        raise ImportError("a kafka:// url needs confluent-kafka (librdkafka): pip install 'shmbus[kafka]'") from None
    return confluent_kafka


__all__ = ["load_confluent"]
