"""The core layer: what every process of a bus shares.

Paths in the data dir, topic configuration, the shared-memory objects (rings,
the bus control block, group offsets tables) and the checks made when one is
opened, the futex, the partitioner, the record header codec, the assignors,
and the choice of verbs: the compiled ones (``_native.c``) or the numba
kernels (``shmbus.kernels``). Imports only ``shmbus.layout``,
``shmbus.kernels``, ``shmbus.errors`` and ``shmbus.records``.
"""
