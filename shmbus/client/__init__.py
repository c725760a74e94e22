"""The client layer: what a user's process runs.

``Bus`` (admin), ``Producer``, ``Consumer`` and a consumer's group
membership, over a low-level handle on the bus's rings; and the link to the
supervisor (starting it, asking it to stop). Imports ``shmbus.log`` and
below, never ``shmbus.supervisor``.
"""
