"""The shim's spill log: what cannot be sent now waits on disk, in order, across restarts.

A directory of append-only segment files (``000000000001.seg``, ...). Each append writes one
*frame* (one batch of records) and fsyncs it before returning, so an acknowledged spill
survives a crash or a kill. Frames are read back oldest first; ``ack`` moves a persisted
cursor past the frame and deletes a segment once it is fully replayed.

Frame: ``>II`` (payload length, CRC-32 of the payload), then the payload: ``>I`` record count,
and per record ``>H`` topic length + topic, ``>i`` key length (-1 = no key) + key, ``>I`` value
length + value. A torn tail (a crash mid-append) fails its length or CRC check and is cut off
when the log is opened.

Size cap: an append that would take the log beyond ``max_bytes`` is refused and counted as
dropped by the caller (the newest data is dropped; what is already on disk keeps its order).

One process at a time: ``open_lane`` takes an exclusive ``flock`` on one *lane*
(``<dir>/lane-<n>``, the first free one), so replicas that share a directory never share a
log, and a restarted process picks up the lane its predecessor left.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one process per directory
    fcntl = None  # type: ignore[assignment]

Record = tuple[str, bytes | None, bytes]  # (topic, key, value)

_FRAME = struct.Struct(">II")
_COUNT = struct.Struct(">I")
_TOPIC = struct.Struct(">H")
_KEY = struct.Struct(">i")
_VALUE = struct.Struct(">I")
SEGMENT_SUFFIX = ".seg"
MAX_LANES = 64


class SpillLocked(OSError):
    """Every lane of the spill directory is held by another live process."""


def encode(records: Sequence[Record]) -> bytes:
    parts = [_COUNT.pack(len(records))]
    for topic, key, value in records:
        t = topic.encode()
        parts.append(_TOPIC.pack(len(t)))
        parts.append(t)
        if key is None:
            parts.append(_KEY.pack(-1))
        else:
            parts.append(_KEY.pack(len(key)))
            parts.append(key)
        parts.append(_VALUE.pack(len(value)))
        parts.append(value)
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> list[Record]:
    (count,) = _COUNT.unpack_from(payload, 0)
    pos = _COUNT.size
    records: list[Record] = []
    for _ in range(count):
        (tlen,) = _TOPIC.unpack_from(payload, pos)
        pos += _TOPIC.size
        topic = payload[pos:pos + tlen].decode()
        pos += tlen
        (klen,) = _KEY.unpack_from(payload, pos)
        pos += _KEY.size
        key = None
        if klen >= 0:
            key = payload[pos:pos + klen]
            pos += klen
        (vlen,) = _VALUE.unpack_from(payload, pos)
        pos += _VALUE.size
        records.append((topic, key, payload[pos:pos + vlen]))
        pos += vlen
    return records


class SpillLog:
    """An on-disk FIFO of record batches. Not thread-safe: the shim's sender owns it."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 256 * 1024 * 1024,
                 segment_bytes: int = 8 * 1024 * 1024, fsync: bool = True, lock: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock_file: IO[bytes] | None = None
        if lock:
            self._lock_file = _lock(self.directory / "lock")
        self.torn_frames = 0
        self._segments: list[int] = sorted(int(p.stem) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}")
                                           if p.stem.isdigit())
        self._read_seg, self._read_pos = self._load_cursor()
        self._segments = [s for s in self._segments if s >= self._read_seg]
        for stale in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
            if stale.stem.isdigit() and int(stale.stem) < self._read_seg:
                stale.unlink(missing_ok=True)
        self._writer: IO[bytes] | None = None
        self.pending_records = 0
        self.pending_frames = 0
        self._bytes = 0
        self._scan()
        self._peeked: tuple[int, int, int, int] | None = None  # (segment, end, records, frames)

    # ------------------------------------------------------------------ state
    @property
    def empty(self) -> bool:
        return self.pending_frames == 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{SEGMENT_SUFFIX}"

    def _load_cursor(self) -> tuple[int, int]:
        try:
            seg, pos = (self.directory / "cursor").read_text().split()
            return int(seg), int(pos)
        except (OSError, ValueError):
            return (self._segments[0] if self._segments else 1), 0

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self._read_seg} {self._read_pos}\n")
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(self.directory / "cursor")

    def _scan(self) -> None:
        """Count pending frames; cut a torn tail off the last segment."""
        for seq in self._segments:
            path = self._path(seq)
            start = self._read_pos if seq == self._read_seg else 0
            good_end, frames, records = _scan_file(path, start)
            size = path.stat().st_size
            if good_end < size:
                self.torn_frames += 1
                with open(path, "r+b") as f:
                    f.truncate(good_end)
                size = good_end
            self.pending_frames += frames
            self.pending_records += records
            self._bytes += size

    # ------------------------------------------------------------------ write
    def append(self, records: Sequence[Record]) -> bool:
        """Append one batch durably. False (nothing written) if it would exceed the cap."""
        if not records:
            return True
        frame = encode(records)
        if self._bytes + len(frame) > self.max_bytes:
            return False
        if self._writer is None or self._writer.tell() >= self.segment_bytes:
            self._roll()
        assert self._writer is not None
        self._writer.write(frame)
        self._writer.flush()
        if self._fsync:
            os.fsync(self._writer.fileno())
        self._bytes += len(frame)
        self.pending_frames += 1
        self.pending_records += len(records)
        return True

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        seq = (self._segments[-1] + 1) if self._segments else self._read_seg
        last = self._segments[-1] if self._segments else None
        if last is not None and self._writer is None and self._path(last).stat().st_size < self.segment_bytes:
            seq = last  # reopen the last segment after a restart
        if seq not in self._segments:
            self._segments.append(seq)
        self._writer = open(self._path(seq), "ab")

    # ------------------------------------------------------------------ read
    def peek(self, max_records: int = 1) -> list[Record] | None:
        """The oldest records not yet acknowledged: whole frames, at least one, more while
        the total stays within ``max_records`` (replay sends them as one batch). None if
        the log is empty."""
        while self._segments:
            seq = self._segments[0]
            records: list[Record] = []
            frames, pos = 0, self._read_pos
            try:
                with open(self._path(seq), "rb") as f:
                    f.seek(pos)
                    for payload in _good_frames(f):
                        if frames and len(records) + _COUNT.unpack_from(payload, 0)[0] > max_records:
                            break
                        records.extend(decode(payload))
                        frames += 1
                        pos += _FRAME.size + len(payload)
            except FileNotFoundError:
                pass
            if frames:
                self._peeked = (seq, pos, len(records), frames)
                return records
            if len(self._segments) == 1:
                return None  # the segment being written: nothing more yet
            self._finish_segment()
        return None

    def ack(self) -> None:
        """The records returned by the last ``peek`` were delivered: move past them."""
        if self._peeked is None:
            return
        seq, end, count, frames = self._peeked
        self._peeked = None
        self._read_seg, self._read_pos = seq, end
        self.pending_frames -= frames
        self.pending_records -= count
        if self.pending_frames == 0 and len(self._segments) == 1:
            # everything delivered: start over with an empty segment instead of keeping history
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._path(seq).unlink(missing_ok=True)
            self._segments = []
            self._read_seg, self._read_pos = seq + 1, 0
            self._bytes = 0
        elif len(self._segments) > 1 and end >= self._path(seq).stat().st_size:
            self._finish_segment()
            return
        self._save_cursor()

    def _finish_segment(self) -> None:
        seq = self._segments.pop(0)
        path = self._path(seq)
        with contextlib.suppress(FileNotFoundError):
            self._bytes -= path.stat().st_size
            path.unlink()
        self._read_seg, self._read_pos = (self._segments[0] if self._segments else seq + 1), 0
        self._save_cursor()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None


def _scan_file(path: Path, start: int) -> tuple[int, int, int]:
    """(end of the last good frame, frames, records) from ``start``."""
    frames = records = 0
    pos = start
    with open(path, "rb") as f:
        f.seek(start)
        for payload in _good_frames(f):
            frames += 1
            records += _COUNT.unpack_from(payload, 0)[0]
            pos += _FRAME.size + len(payload)
    return pos, frames, records


def _good_frames(f: IO[bytes]) -> Iterator[bytes]:
    """Payloads of the whole, CRC-valid frames from the file's position; stops at the first
    torn or corrupt one (the tail a crash mid-append leaves)."""
    while True:
        header = f.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return
        length, crc = _FRAME.unpack(header)
        payload = f.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        yield payload


def _lock(path: Path) -> IO[bytes]:
    f = open(path, "ab")
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise SpillLocked(f"{path} is held by another process") from None
    return f


def open_lane(directory: str | os.PathLike[str], **options: object) -> SpillLog:
    """The spill log of the first lane of ``directory`` that no live process holds."""
    root = Path(directory)
    for lane in range(MAX_LANES):
        try:
            return SpillLog(root / f"lane-{lane}", **options)  # type: ignore[arg-type]
        except SpillLocked:
            continue
    raise SpillLocked(f"all {MAX_LANES} lanes of {root} are in use")
