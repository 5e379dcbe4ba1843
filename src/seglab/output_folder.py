"""A folder a command writes its results into, without ever destroying what was there.

`predict output=FOLDER` writes one file per input image. Before anything is written,
`OutputFolder.claim` refuses (one `SeglabError` line, with the fix):

- an output that is, or lies inside, the input's folder tree (`input=data/images
  output=data/images/pred`), so the inputs and anything beside them are never touched;
- an output folder holding files that no earlier predict wrote there (a dataset root
  with its ground-truth masks, a home folder), unless `overwrite=true`;
- a symbolic link among the sub-folders it writes into (a link could lead anywhere).

Which files a predict wrote is recorded in the folder's manifest, `.seglab-predict.json`,
written before the first file, so a predict killed half-way still owns what it wrote and
a rerun into the same folder is allowed. Every file is written to a temporary name in
its folder and moved into place (`os.replace`): a symbolic link already standing at an
output name is replaced by the file, never written through, and a killed run leaves no
half-written image under a real name.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from seglab.errors import SeglabError

MANIFEST = ".seglab-predict.json"
# Files named in a refusal; the count says how many more there are.
_NAMED = 3


def input_root(pattern: str) -> Path:
    """The folder tree an `input=` folder or glob pattern reads from: the folder itself,
    or the pattern's leading parts without wildcards (`photos/**/*.jpg` -> `photos`)."""
    path = Path(os.path.expanduser(pattern))
    if path.is_dir():
        return path.resolve()
    parts = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    else:
        parts = parts[:-1]  # a single file: its folder
    return Path(*parts).resolve() if parts else Path.cwd().resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _listing(folder: Path) -> list[str]:
    """Every file and symbolic link under `folder` (links are listed, never followed),
    relative to it, in POSIX form."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        base = Path(current)
        links = [d for d in dirs if (base / d).is_symlink()]
        for name in [*files, *links]:
            found.append((base / name).relative_to(folder).as_posix())
    return sorted(found)


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    more = len(names) - _NAMED
    return shown + (f" and {more} more" if more > 0 else "")


class OutputFolder:
    """The output folder of one predict: its checks, its manifest, its safe writes.

    Args:
        path: the output folder (created if missing).
        overwrite: allow files no earlier predict wrote (they are still never written
            through a link, and the input tree is still refused).
    """

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = path
        self.overwrite = overwrite
        self.manifest = path / MANIFEST

    def _owned(self) -> set[str]:
        if not self.manifest.is_file():
            return set()
        try:
            return set(json.loads(self.manifest.read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SeglabError(
                f"{self.manifest} is not a readable predict manifest ({err}); delete it, "
                "or give a new output folder"
            ) from err

    def claim(self, input_pattern: str, planned: Iterable[str], subfolders: Sequence[str]) -> None:
        """Check the folder may be written (see the module docstring), then record the
        files about to be written (`planned`, relative POSIX paths) in the manifest.

        Raises:
            SeglabError: the output is inside the input tree, holds foreign files, or
                one of `subfolders` is a link.
        """
        if self.path.exists() and not self.path.is_dir():
            raise SeglabError(f"output={self.path} is a file; give a folder")
        root = input_root(input_pattern)
        resolved = self.path.resolve()
        if _inside(resolved, root):
            raise SeglabError(
                f"output={self.path} is inside the input folder {root}; predictions are "
                "never written into the input tree: give an output folder outside it"
            )
        for name in subfolders:
            if (self.path / name).is_symlink():
                raise SeglabError(
                    f"{self.path / name} is a symbolic link; predict writes only into real "
                    "folders: remove the link or give a new output folder"
                )
        owned = self._owned()
        if self.path.is_dir() and not self.overwrite:
            foreign = [f for f in _listing(self.path) if f != MANIFEST and f not in owned]
            if foreign:
                raise SeglabError(
                    f"output={self.path} holds {len(foreign)} file(s) no earlier predict "
                    f"wrote ({_named(foreign)}); give a new or empty output folder, or "
                    "overwrite=true to write beside them (files of the same name are "
                    "replaced)"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        for name in subfolders:
            (self.path / name).mkdir(exist_ok=True)
        self._write_manifest(sorted(owned | set(planned)))

    def _write_manifest(self, files: list[str]) -> None:
        text = json.dumps({"written_by": "seglab.predict", "files": files}, indent=1)
        self.write(MANIFEST, lambda file: file.write(text.encode()))

    def write(self, relative: str, save: Callable[[IO[bytes]], object]) -> Path:
        """Write `self.path / relative` by calling `save` on a temporary file beside it,
        then moving that file into place (replacing a link there, never following it)."""
        target = self.path / relative
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                save(file)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def open_stream(self, relative: str) -> IO[str]:
        """`self.path / relative` opened for writing text as it comes (rows of a CSV kept
        by an interrupted run); a link standing at that name is removed, never followed."""
        target = self.path / relative
        if target.is_symlink():
            target.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        return os.fdopen(os.open(target, flags, 0o644), "w", newline="")
