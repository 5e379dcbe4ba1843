"""The header scan: every file of the splits a datamodule sets up is opened, its header
read (format, mode, size; PIL opens lazily, so nothing is decoded) and, for PNG and JPEG,
its last bytes checked for the end marker (the IEND chunk, the EOI marker), so a bad
file stops a run in `setup()`, before the first training step, with every bad file named
in one error, instead of mid-epoch. (PIL's WebP plugin already refuses to open a
truncated WebP file; other formats get no end check.)

A file whose end looks wrong is decoded in full before it is reported: a PNG without
IEND, or a JPEG with data after its EOI (a phone's motion photo), still decodes, and
only what does not decode is an error. What a header means for a dataset (an RGB mask
where class-index masks are expected, an image and mask of different sizes) is the
datamodule's to say; this module reads the headers and reports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from seglab.data.base import examples
from seglab.data.io import PIL_ERRORS
from seglab.errors import SeglabError, one_line

# The last bytes read to find a PNG's IEND chunk or a JPEG's EOI marker: one page. A
# little padding after the marker is common; more only costs a full decode.
TAIL = 1024
# Files per task of the thread pool: large enough that queueing costs nothing.
CHUNK = 256


@dataclass(frozen=True)
class Header:
    """What an image file's header says; `error`, when not None, says why it is no
    (whole) image instead, as one line."""

    format: str | None = None
    mode: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None


def _ends_whole(file, image_format: str | None) -> bool:
    """Whether a PNG or JPEG file's last bytes hold its end marker (other formats: True)."""
    if image_format not in ("PNG", "JPEG"):
        return True
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - TAIL))
    return (b"IEND" if image_format == "PNG" else b"\xff\xd9") in file.read()


def read_header(path: str | Path) -> Header:
    """The header of the image file at `path`; never raises for a bad file."""
    try:
        with open(path, "rb") as file:
            with Image.open(file) as picture:  # reads the header only
                header = Header(picture.format, picture.mode, *picture.size)
            if _ends_whole(file, header.format):
                return header
        with Image.open(path) as picture:  # its end looks cut: does it decode?
            picture.load()
        return header
    except UnidentifiedImageError:  # its message names the file object, not the file
        return Header(error="cannot identify image file")
    except PIL_ERRORS as err:
        return Header(error=one_line(err))


def _read_chunk(paths: Sequence[str | Path]) -> list[Header]:
    return [read_header(path) for path in paths]


def scan_workers() -> int:
    """Threads that read headers when reading waits on the disk (a network file system
    most of all): more threads than cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(32, 4 * (cores or 1))


# Seconds per file above which reading headers waits on the disk rather than on Python:
# parsing a header takes about 60 us of CPU, under the GIL, so threads only help (and on a
# local disk with the files cached they halve the speed) when files are slower to open.
IO_BOUND_S = 200e-6


def read_headers(paths: Sequence[str | Path]) -> list[Header]:
    """`read_header` of every path, in order: in this thread while that keeps up with
    the CPU, by a pool of threads when the first files show that opening them waits on
    the disk."""
    started = time.perf_counter()
    headers = _read_chunk(paths[:CHUNK])
    rest = paths[CHUNK:]
    if not rest:
        return headers
    if (time.perf_counter() - started) / CHUNK < IO_BOUND_S:
        return headers + _read_chunk(rest)
    chunks = [rest[i : i + CHUNK] for i in range(0, len(rest), CHUNK)]
    with ThreadPoolExecutor(min(scan_workers(), len(chunks))) as pool:
        return headers + [header for chunk in pool.map(_read_chunk, chunks) for header in chunk]


def raise_all(messages: Sequence[str], files: Sequence[str], where: str, fix: str) -> None:
    """One SeglabError for every file the scan found bad, when any: the first line
    counts them and names the first few, then one line per problem.

    Args:
        messages: one per problem, naming its file and the fix.
        files: the bad files, in order (a file may have several messages).
        where: what was scanned, e.g. "data.root=/data/roads".
        fix: the fix, after the count.
    """
    if not messages:
        return
    bad = list(dict.fromkeys(files))
    lines = "\n".join(f"  - {message}" for message in messages)
    count = f"1 file of {where} fails" if len(bad) == 1 else f"{len(bad)} files of {where} fail"
    raise SeglabError(f"{count} the header check at setup ({examples(bad)}); {fix}:\n{lines}")
