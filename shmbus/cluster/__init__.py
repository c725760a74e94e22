"""The Kafka-cluster backend: the same ``Bus``, ``Producer`` and ``Consumer`` API on a Kafka cluster.

``shmbus.connect("kafka://host:port")`` returns a :class:`~shmbus.cluster.bus.ClusterBus`; its
producers and consumers are librdkafka clients (confluent-kafka, the ``kafka`` extra) behind
shmbus's names, records and errors. What a cluster cannot do as shared memory does is listed
in docs/backends.md, and is a warning or an error naming the option, never silent.

- ``urls.py``: ``connect(url)``: a data dir, ``shm:///path`` or ``kafka://host:port[,host:port]``
- ``bus.py``: ``ClusterBus``: topic and group admin, the factory of clients
- ``producer.py``: ``ClusterProducer``
- ``consumer.py``: ``ClusterConsumer``
- ``options.py``: shmbus options to librdkafka properties, and the checks of both
- ``errors.py``: librdkafka's errors as shmbus's
- ``librdkafka.py``: importing confluent_kafka, or saying which extra brings it
- ``probe.py``: which Kafka APIs the cluster serves (an ApiVersions request)

Nothing here is imported by ``import shmbus``; confluent_kafka is imported when a
``kafka://`` bus is made.
"""
