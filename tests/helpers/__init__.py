"""What the tests share: rings and frames made by hand, segment files, waiting, processes, bus cleanup.

Test modules import from here, never from one another; ``conftest.py`` holds
the fixtures only.
"""
