"""The log layer: a partition's files on disk and the policies over them.

Segment files and their indexes (reading and writing), recovery on start,
the atomic swap of a cleaned segment, retention and compaction, topic
metadata, the consumer groups' offset checkpoints, and a partition's ring at
the log end. Used by clients (reads) and the supervisor (writes); imports
only ``shmbus.core`` and below.
"""
