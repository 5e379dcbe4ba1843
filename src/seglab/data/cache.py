"""Decode once (`data.cache`): a split's images, and masks, decoded a single time into
uint8 arrays that every epoch, loader worker, DDP rank and later run then reads.

    data.cache=auto     memory when the decoded splits take at most a quarter of the
                        available memory, else none (the default)
    data.cache=memory   decoded in `setup()`, held by each training process; loader
                        workers share it (fork)
    data.cache=disk     decoded once into memory-mapped .npy files under data.cache_dir,
                        built by `prepare_data()` (one process per node), mapped by every
                        rank and worker in `setup()`
    data.cache=none     every sample decoded and transformed each time it is read

Layouts, one per task (`decoded_nbytes` gives their size):

    classification  images uint8 [N, 3, H, W] (resized to the input size), labels int64 [N]
    segmentation    images uint8 [sum 3*h*w] and masks uint8 [sum h*w] (class indices, after
                    palette and label_map decoding), index int64 [N, 4] holding each
                    sample's (image offset, mask offset, h, w): ragged, every image keeps
                    its own size

On disk a split lives in `<cache_dir>/<name>-<settings hash>/<files hash>/`: `manifest.json`
(format, settings, every source file's path, size and modification time, the arrays'
shapes) and one .npy per array. The settings hash covers what decoding depends on besides
the files (dataset, root, split, image size, label map, palette), the files hash the files
themselves: a file changed, added or removed gives another folder, which is built in a
temporary folder and renamed into place (atomic), after which the stale one is deleted and
the log says why it was stale. A cache file that does not read back as its manifest says
(shape, dtype, size, or a CRC-32 of its bytes taken when it was built: a file zeroed or
overwritten in place keeps its size) is a `SeglabError` naming it. It is not rebuilt
behind the user's back: other ranks and workers may have it mapped, and a disk that
corrupts files should be noticed; the error says to delete the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from seglab.errors import SeglabError, one_line

log = logging.getLogger(__name__)

CacheMode = Literal["none", "memory", "disk", "auto"]
MODES = ("none", "memory", "disk", "auto")
FORMAT = 2  # raised when the layout changes: caches of an older format are not found
MANIFEST = "manifest.json"
# auto keeps the decoded splits in memory when they take at most this share of it.
MEMORY_SHARE = 0.25
# Fewer files than this are decoded in the calling process: starting loader workers takes
# longer than decoding them (and tests can count decodes in-process).
PARALLEL_FROM = 2048
DECODE_BATCH = 256
# Bytes checksummed per call: large enough that the per-call overhead vanishes, small
# enough that a memory-mapped file is paged through rather than held whole.
CHECKSUM_CHUNK = 1 << 24
# Bytes per sample besides its pixels: a label (classification), an index row (segmentation).
_LABEL_BYTES, _INDEX_BYTES = 8, 32

# `allocate(name, shape, dtype)` -> a writable array that becomes the cache's array `name`.
Allocate = Callable[[str, tuple[int, ...], Any], np.ndarray]
# `build(allocate)` -> ({name: array}, extra): fills allocated arrays (an array may be
# returned as a leading slice `a[:k]` of its allocation); `extra` goes into the manifest.
Build = Callable[[Allocate], tuple[dict[str, np.ndarray], dict[str, Any]]]


def check_mode(cache: str) -> str:
    """`data.cache`, checked."""
    if cache not in MODES:
        raise SeglabError(f"data.cache={cache!r} is not one of {list(MODES)}")
    return cache


def cache_root(cache_dir: str | Path | None) -> Path:
    """`data.cache_dir`, or for null `$XDG_CACHE_HOME/seglab` (`~/.cache/seglab`)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seglab"


def decoded_nbytes(task: str, samples: int, pixels: int) -> int:
    """Bytes a split's cache takes: `pixels` summed over its `samples` images (h * w
    each), stored as RGB (and a mask per pixel for segmentation)."""
    if task == "segmentation":
        return 4 * pixels + _INDEX_BYTES * samples
    return 3 * pixels + _LABEL_BYTES * samples


def available_memory() -> int:
    """Bytes that new allocations can take without swapping: /proc/meminfo's
    MemAvailable (else the free pages, `os.sysconf`), capped by the cgroup's limit."""
    available = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not available:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return 0
    try:  # a container's limit (cgroup v2), when it is lower
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def resolve(cache: str, nbytes: Callable[[], int], trainer: Any = None) -> str:
    """The mode to use: `cache` itself, or for auto "memory" when the decoded splits
    (`nbytes()`, once per training process on this machine) take at most a quarter of the
    available memory, else "none". Under DDP rank 0 decides for all: ranks that measured
    a slightly different free memory must still read their data alike."""
    if cache != "auto":
        return cache
    processes = int(trainer.num_devices) if trainer is not None else 1
    need, free = nbytes() * processes, available_memory()
    mode = "memory" if need <= MEMORY_SHARE * free else "none"
    if trainer is not None and trainer.world_size > 1:
        mode = trainer.strategy.broadcast(mode, src=0)
    if mode == "memory":
        log.info("data.cache=auto: decoding once into memory (%s of %s)", _mib(need), _mib(free))
    else:
        log.info(
            "data.cache=auto: the decoded splits need %s, more than a quarter of the %s "
            "available; decoding every sample when read (data.cache=disk caches them on disk "
            "instead)",
            _mib(need),
            _mib(free),
        )
    return mode


def fitting(stage: str | None) -> bool:
    """Whether `setup(stage)` builds the training split too: evaluation alone ("validate",
    "test", "predict") decodes none of it."""
    return stage in (None, "fit")


def trainer_stage(trainer: Any) -> str | None:
    """The stage `trainer` runs ("fit", "test", ...), for `prepare_data()`, which Lightning
    calls without one; None without a trainer."""
    function = getattr(getattr(trainer, "state", None), "fn", None)
    return None if function is None else str(function.value)


class Store:
    """A split's decoded arrays, in memory or mapped from a disk cache folder.

    Pickled (spawned loader workers, `ddp_spawn`), a mapped store carries its folder and
    maps the same files again on the other side instead of copying the data.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        extra: dict[str, Any] | None = None,
        folder: Path | None = None,
        rows: dict[str, int] | None = None,
    ) -> None:
        self.arrays = arrays
        self.extra = extra or {}
        self.folder = folder
        self.rows = rows or {name: len(array) for name, array in arrays.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.folder is not None:
            state["arrays"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.arrays is None:
            self.arrays = {
                name: np.asarray(np.load(self.folder / f"{name}.npy", mmap_mode="r"))[:rows]
                for name, rows in self.rows.items()
            }


def in_memory(build: Build) -> Store:
    """A store built into this process's memory."""
    arrays, extra = build(lambda name, shape, dtype: np.empty(shape, dtype))
    return Store(arrays, extra)


@dataclass(frozen=True)
class Source:
    """What a disk cache is decoded from: its identity.

    Args:
        name: readable start of its folder's name (e.g. "photos-train").
        settings: everything decoding depends on besides the files (JSON values).
        files: `file_stats` of the source files, in sample order.
    """

    name: str
    settings: dict[str, Any]
    files: list[list]


def file_stats(paths: Iterable[str | Path]) -> list[list]:
    """`[path, size, modification time in ns]` of each file: a cache's key."""
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    return stats


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def checksum(array: np.ndarray) -> int:
    """CRC-32 of `array`'s bytes (C order), read in chunks so a memory map is paged
    through. zlib's CRC-32 runs at ~3.5 GB/s here (150 MB in ~45 ms, page cache warm),
    4x blake2b: it guards against damage, not tampering."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    value = 0
    for start in range(0, flat.size, CHECKSUM_CHUNK):
        value = zlib.crc32(flat[start : start + CHECKSUM_CHUNK], value)
    return value


def _place(cache_dir: Path, source: Source) -> tuple[Path, Path, str]:
    """(entry folder of `source`'s settings, folder of its files, files fingerprint)."""
    entry = cache_dir / f"{source.name}-{_digest([FORMAT, source.settings])[:12]}"
    fingerprint = _digest(source.files)
    return entry, entry / fingerprint[:16], fingerprint


def is_built(cache_dir: Path, source: Source) -> bool:
    """Whether `on_disk` finds `source`'s cache built, for these very files: then every
    file was decoded once already, and decodes nothing now."""
    return _place(cache_dir, source)[1].is_dir()


def on_disk(cache_dir: Path, source: Source, build: Build) -> Store:
    """The store of `source` mapped from `cache_dir`, built there first when missing or
    stale. Safe to call from several processes at once: each builds into a folder of
    its own and renames it into place; a later rename finds it there and is dropped."""
    entry, folder, fingerprint = _place(cache_dir, source)
    if folder.is_dir():
        store = _open(folder, fingerprint)
        log.info("data cache %s: %d samples, nothing to decode", folder, len(store))
        return store
    stale = sorted(p for p in entry.glob("[!.]*") if p.is_dir()) if entry.is_dir() else []
    if stale:
        log.info("data cache %s is stale (%s); rebuilding it", entry, _why(stale[0], source))
    else:
        log.info("building the data cache %s", folder)
    unwritable = (
        "; free space there, point data.cache_dir at a writable folder, or set data.cache=memory"
    )
    building: Path | None = None
    try:
        entry.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=entry))
        _write(building, fingerprint, source, build)
        try:
            os.rename(building, folder)  # atomic: other processes see all of it or nothing
        except OSError:
            if not folder.is_dir():  # not another process's build: a real failure
                raise
    except OSError as err:
        raise SeglabError(
            f"cannot write the data cache {entry}: {one_line(err)}{unwritable}"
        ) from err
    finally:
        if building is not None:
            shutil.rmtree(building, ignore_errors=True)
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)
    return _open(folder, fingerprint)


def _write(building: Path, fingerprint: str, source: Source, build: Build) -> None:
    """Build the arrays as .npy files in the folder `building`, then the manifest."""
    allocated: dict[str, np.ndarray] = {}

    def allocate(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        path = building / f"{name}.npy"
        allocated[name] = np.lib.format.open_memmap(path, "w+", np.dtype(dtype), shape)
        return allocated[name]

    arrays, extra = build(allocate)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "settings": source.settings,
        "arrays": {},
        "extra": extra,
        "files": source.files,
    }
    for name, array in arrays.items():
        stored = allocated[name]
        stored.flush()
        manifest["arrays"][name] = {
            "shape": list(stored.shape),
            "dtype": stored.dtype.str,
            "rows": len(array),  # a leading slice: the rows in use
            "crc32": checksum(stored[: len(array)]),
        }
    # Written last: a folder with a manifest is complete.
    (building / MANIFEST).write_text(json.dumps(manifest))


def _why(old: Path, source: Source) -> str:
    """What differs between the stale cache `old` and the files now: counts of changed,
    added and removed files, with an example."""
    try:
        files = json.loads((old / MANIFEST).read_text())["files"]
        before = {path: (size, mtime) for path, size, mtime in files}
    except (OSError, ValueError, KeyError, TypeError):
        return f"its manifest {old / MANIFEST} is unreadable"
    now = {path: (size, mtime) for path, size, mtime in source.files}
    changed = [p for p in now if p in before and before[p] != now[p]]
    added = [p for p in now if p not in before]
    removed = [p for p in before if p not in now]
    counts = [(changed, "changed"), (added, "added"), (removed, "removed")]
    found = [f"{len(paths)} {what}" for paths, what in counts if paths]
    if not found:
        return "the same files in another order"
    example = (changed or added or removed)[0]
    return f"files {', '.join(found)}, e.g. {example}"


def _open(folder: Path, fingerprint: str) -> Store:
    """Map the arrays of a built cache folder, checking each against its manifest."""
    fix = f"delete {folder} (the next run rebuilds it) or set data.cache=none"
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest["format"] != FORMAT or manifest["fingerprint"] != fingerprint:
            raise ValueError("it belongs to another cache")
        specs = {
            name: (
                tuple(spec["shape"]),
                np.dtype(spec["dtype"]),
                int(spec["rows"]),
                int(spec["crc32"]),
            )
            for name, spec in manifest["arrays"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SeglabError(f"data cache file {path} is unreadable ({one_line(err)}); {fix}") from err
    arrays, rows = {}, {}
    for name, (shape, dtype, count, crc) in specs.items():
        file = folder / f"{name}.npy"
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            size = file.stat().st_size
        except (OSError, ValueError) as err:
            raise SeglabError(
                f"data cache file {file} is unreadable ({one_line(err)}); {fix}"
            ) from err
        expected = array.offset + array.nbytes
        if array.shape != shape or array.dtype != dtype or size != expected:
            raise SeglabError(
                f"data cache file {file} holds {array.dtype} {list(array.shape)} in {size} "
                f"bytes but its manifest says {dtype} {list(shape)} in {expected} bytes "
                f"(truncated or overwritten); {fix}"
            )
        used = np.asarray(array)[:count]
        if checksum(used) != crc:
            raise SeglabError(
                f"data cache file {file} has the size its manifest says but not the bytes it "
                f"was built with (CRC-32 mismatch: overwritten or damaged on disk); {fix}"
            )
        arrays[name], rows[name] = used, count
    return Store(arrays, manifest.get("extra", {}), folder, rows)


class _Failed:
    """A sample that raised SeglabError while decoding, carried back to the main process."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Guarded(Dataset):
    def __init__(self, source: Dataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            item = self.source[index]
        except SeglabError as err:
            return _Failed(str(err))
        if item is None:
            return None
        # Arrays pickle as one buffer each; tensors would take a shared-memory file each.
        return tuple(x.numpy() if isinstance(x, torch.Tensor) else x for x in item)


def _as_list(batch: list) -> list:
    return batch


def decode_workers() -> int:
    """Processes that decode while building a cache: the cores this one may use (at most 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cores or 1) if (cores or 1) > 1 else 0


def decoded(source: Dataset, desc: str) -> Iterator[tuple[int, tuple | None]]:
    """`(index, item)` of every item of `source` in order, items as numpy arrays and None
    where `source` gives None (a skipped file); decoded by loader workers over the cores
    for large sources, with a progress bar. Items raising SeglabError are all decoded
    past, then raised here as one error naming every one (the first few in its first
    line), as the header scan reports them."""
    count = len(source)  # type: ignore[arg-type]
    workers = decode_workers() if count >= PARALLEL_FROM else 0
    loader = DataLoader(
        _Guarded(source), batch_size=DECODE_BATCH, num_workers=workers, collate_fn=_as_list
    )
    index, failed = 0, []
    with tqdm(total=count, desc=desc, unit="img", leave=False) as bar:
        for batch in loader:
            for item in batch:
                if isinstance(item, _Failed):
                    failed.append(item.message)
                elif not failed:  # once one failed, the rest are only checked
                    yield index, item
                index += 1
            bar.update(len(batch))
    if failed:
        raise DecodeFailed(failed)


class DecodeFailed(SeglabError):
    """Samples that raised SeglabError while a cache was built: one line each
    (`messages`); the error's text is the one message, or a count and every line."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        lines = "\n".join(f"  - {message}" for message in self.messages)
        count = len(self.messages)
        super().__init__(
            self.messages[0] if count == 1 else f"{count} samples fail to decode:\n{lines}"
        )


def build_classification(source: Dataset, size: tuple[int, int], desc: str) -> Build:
    """Build of the classification layout from `source`, whose items are `(uint8 image
    [3, *size], int label)` or None for a sample to leave out (its index goes to
    `extra["skipped"]`)."""

    def build(allocate: Allocate) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        count = len(source)  # type: ignore[arg-type]
        images = allocate("images", (count, 3, *size), np.uint8)
        labels = allocate("labels", (count,), np.int64)
        skipped, k = [], 0
        for index, item in decoded(source, desc):
            if item is None:
                skipped.append(index)
                continue
            images[k], labels[k] = item
            k += 1
        return {"images": images[:k], "labels": labels[:k]}, {"skipped": skipped}

    return build


def build_segmentation(
    source: Dataset, sizes: Callable[[], np.ndarray], names: Sequence[str], desc: str
) -> Build:
    """Build of the segmentation layout from `source`, whose items are `(uint8 image
    [3, h, w], uint8 mask [h, w])`; `sizes()` gives every (h, w) beforehand (from the
    file headers), `names` name the samples in errors."""

    def build(allocate: Allocate) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        shapes = np.asarray(sizes(), dtype=np.int64).reshape(-1, 2)
        pixels = shapes[:, 0] * shapes[:, 1]
        starts = np.concatenate([[0], np.cumsum(pixels)[:-1]]).astype(np.int64)
        index = allocate("index", (len(shapes), 4), np.int64)
        index[:] = np.stack([3 * starts, starts, shapes[:, 0], shapes[:, 1]], axis=1)
        images = allocate("images", (3 * int(pixels.sum()),), np.uint8)
        masks = allocate("masks", (int(pixels.sum()),), np.uint8)
        for i, (image, mask) in decoded(source, desc):
            start, area = int(starts[i]), int(pixels[i])
            if image.shape != (3, *shapes[i]):
                raise SeglabError(
                    f"{names[i]} decoded to {list(image.shape[1:])} pixels but its header "
                    f"says {shapes[i].tolist()}; replace the file or set data.cache=none"
                )
            images[3 * start : 3 * (start + area)] = image.reshape(-1)
            masks[start : start + area] = mask.reshape(-1)
        return {"index": index, "images": images, "masks": masks}, {}

    return build


def segmentation_sample(store: Store, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index` of a segmentation store: uint8 image [3, h, w], mask [h, w] (views)."""
    image_start, mask_start, height, width = (int(v) for v in store["index"][index])
    area = height * width
    image = store["images"][image_start : image_start + 3 * area].reshape(3, height, width)
    return image, store["masks"][mask_start : mask_start + area].reshape(height, width)


def segmentation_sizes(store: Store) -> np.ndarray:
    """(h, w) of every sample of a segmentation store: int64 [N, 2]."""
    return np.asarray(store["index"][:, 2:4])


def pass_through(batch: Any) -> Any:
    """The collate of loaders over cached splits: their `__getitems__` gives whole batches."""
    return batch
