"""The Kafka protocol: a listener through which any Kafka client uses the bus.

``shmbus serve --kafka-listener HOST:PORT`` starts it inside the supervisor.
A Kafka client (librdkafka and everything built on it, the Java client,
kafka-python, kcat) with ``bootstrap.servers=HOST:PORT`` then sees the bus as
a one-broker cluster: the same topics, partitions, offsets, keys, values,
headers and timestamps as the Python API, and the same committed offsets.

- ``server.py``: the socket, its connections (one thread each: Kafka answers
  a connection's requests in order, one at a time), framing, limits, dispatch;
- ``registry.py``: which API (and versions) each handler answers;
- ``broker.py``: what handlers share (topics, rings, the cluster's ids);
- ``groups.py``: Kafka consumer groups (members, rebalances, the leader's
  assignment relayed); their committed offsets are the supervisor's group
  coordinator's, shared with the Python API;
- ``handlers/``: one module per family of APIs.

The request and response schemas are kafka-python's (generated from Kafka's
own JSON message definitions); record batches are converted to and from
ring frames by numba kernels (``shmbus/kernels/kafka_in.py``, ``kafka_out.py``).
"""
