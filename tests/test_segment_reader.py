"""The segment reader against a writer working at the same time (files only, no ring)."""

from __future__ import annotations

import os

from helpers.frames import frame, write_segment

from shmbus.log.reader import PartitionLog


def test_a_read_at_a_segment_end_passes_nothing_when_the_writer_completes_it_and_rolls_meanwhile(tmp_path):
    """The reader finds the end of the newest segment; before it lists the directory, the writer
    appends more records to that segment, fills it and starts the next one. The records appended
    in between must be read, not passed over for the next segment's first."""
    pdir = str(tmp_path / "p")
    frames = [frame(o, 1000 + o, b"k%d" % o, b"v%d" % o * 7) for o in range(30)]
    seg0 = write_segment(pdir, 0, frames[:10])
    log = PartitionLog(pdir)
    n, meta, _ = log.read(0, 100)
    assert meta[1: n + 1, 1].tolist() == list(range(10))

    listed = log.refresh

    def writer_between_the_read_and_the_listing():
        if not os.path.exists(os.path.join(pdir, f"{20:020d}.log")):
            with open(seg0, "ab") as f:
                f.write(b"".join(frames[10:20]))
            write_segment(pdir, 20, frames[20:30])
        listed()

    log.refresh = writer_between_the_read_and_the_listing
    got = []
    while len(got) < 20:
        n, meta, _ = log.read(10 + len(got), 100)
        assert n, f"nothing read after {got}"
        got.extend(meta[1: n + 1, 1].tolist())
    assert got == list(range(10, 30))
    log.close()


def test_a_torn_frame_at_the_end_of_a_segment_that_is_not_the_newest_is_passed(tmp_path):
    """A segment that ends in a partly written frame (a supervisor killed mid-write, before the
    next start's recovery cuts it) followed by a newer segment: the reader moves on."""
    pdir = str(tmp_path / "p")
    frames = [frame(o, 1000 + o, None, b"v%d" % o * 9) for o in range(12)]
    write_segment(pdir, 0, frames[:6] + [frames[6][:20]])
    write_segment(pdir, 6, frames[6:])
    log = PartitionLog(pdir)
    got = []
    while len(got) < 12:
        n, meta, _ = log.read(len(got), 100)
        assert n, f"nothing read after {got}"
        got.extend(meta[1: n + 1, 1].tolist())
    assert got == list(range(12))
    log.close()
