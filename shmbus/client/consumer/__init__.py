"""The ``Consumer``, one job per module.

- ``consumer.py``: the ``Consumer`` class: construction, ``poll``, lifecycle
- ``iteration.py``: iterating a consumer (shared with the Kafka-cluster consumer)
- ``config.py``: checks of the constructor's arguments
- ``guard.py``: one thread at a time inside a consumer
- ``partition.py``: the read state of one assigned partition
- ``assignment.py``: subscribe, assign, pause and resume
- ``offsets.py``: positions, seeks, beginning and end offsets, offsets for times, commits
- ``fetch.py``: reading records from a partition's ring and from the disk behind it
- ``wait.py``: waiting for a record: a spin, then a sleep on the bus doorbell
"""

from shmbus.client.consumer.consumer import Consumer

__all__ = ["Consumer"]
