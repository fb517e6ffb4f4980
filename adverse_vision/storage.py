"""Paths anywhere: local folders and cloud storage (``gs://``, ``s3://``, ``az://``,
``hf://``) through ``etils.epath``.

Every file the programs write in a workdir or an output folder (``config.json``,
``metrics.jsonl``, TensorBoard events, ``summary.json``, checkpoints, predictions) and
the image files ``predict`` reads go through here, so a workdir may be a bucket
(``--workdir gs://bucket/runs/x``) and every host of a slice writes into the same one.
``gs://`` needs ``gcsfs`` (in the requirements); ``s3://`` needs ``s3fs``.

Object stores cannot append: a growing text file (``metrics.jsonl``) and the
TensorBoard event file are rewritten whole at each flush there (they are small), and
appended locally. A whole file (``config.json``, ``summary.json``) is written at once
(:func:`write_text`), so the other processes of a run never read it half-written.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Union

from etils import epath

PathLike = Union[str, os.PathLike]

#: URL schemes that ``etils.epath`` serves from a remote store.
URL_SCHEMES = ("gs", "s3", "az", "hf")


def is_url(path: PathLike) -> bool:
    """Whether ``path`` names a remote store (``gs://...``) rather than a local file."""
    return "://" in os.fspath(path)


def absolute(p: PathLike) -> str:
    """A local path made absolute; a URL as it is (``os.path.abspath`` would turn
    ``gs://b/x`` into ``./gs:/b/x``)."""
    p = os.fspath(p)
    return p if is_url(p) else os.path.abspath(p)


def join(base: PathLike, *parts: str) -> str:
    return os.fspath(epath.Path(base).joinpath(*parts))


def exists(p: PathLike) -> bool:
    return os.path.exists(p) if not is_url(p) else epath.Path(p).exists()


def isdir(p: PathLike) -> bool:
    return os.path.isdir(p) if not is_url(p) else epath.Path(p).is_dir()


def isfile(p: PathLike) -> bool:
    return os.path.isfile(p) if not is_url(p) else epath.Path(p).is_file()


def isabs(p: PathLike) -> bool:
    """Whether ``p`` stands on its own: an absolute local path or a URL."""
    return is_url(p) or os.path.isabs(p)


def makedirs(p: PathLike) -> None:
    epath.Path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
    """The names in folder ``p``, sorted."""
    if not is_url(p):
        return sorted(os.listdir(p))
    return sorted(child.name for child in epath.Path(p).iterdir())


def glob(folder: PathLike, pattern: str) -> list[str]:
    """The paths under ``folder`` that match ``pattern`` (``*/dataset_info.json``)."""
    return sorted(os.fspath(m) for m in epath.Path(folder).glob(pattern))


def read_text(p: PathLike) -> str:
    return epath.Path(p).read_text()


def read_bytes(p: PathLike) -> bytes:
    return epath.Path(p).read_bytes()


def write_text(p: PathLike, text: str) -> None:
    """Writes the whole file at once: a reader (another process of the run, say, reading
    ``config.json`` while process 0 rewrites it) sees the old text or the new one,
    never a part. Locally through a temporary file in the same folder, renamed over
    ``p``; an object store replaces an object whole."""
    if is_url(p):
        epath.Path(p).write_text(text)
        return
    path = os.fspath(p)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def open_file(p: PathLike, mode: str = "rb") -> IO:
    return epath.Path(p).open(mode)


class GrowingFile:
    """A file written a piece at a time, readable after every :meth:`flush`: appended
    locally; in an object store its whole content is rewritten at each flush."""

    def __init__(self, p: PathLike, binary: bool = False):
        self.path = os.fspath(p)
        self.binary = binary
        self._remote = is_url(self.path)
        self._lock = threading.Lock()
        if self._remote:
            self._content = b"" if binary else ""
            if exists(self.path):  # a resumed run adds to what is there
                with epath.Path(self.path).open("rb" if binary else "r") as f:
                    self._content = f.read()
            self._file = None
        else:
            self._file = open(self.path, "ab" if binary else "a")

    def write(self, data: Union[str, bytes]) -> None:
        with self._lock:
            if self._remote:
                self._content += data
            else:
                self._file.write(data)

    def flush(self) -> None:
        with self._lock:
            if self._remote:
                with epath.Path(self.path).open("wb" if self.binary else "w") as f:
                    f.write(self._content)
            else:
                self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class _EventFiles:
    """tensorboardX's writer factory for URL prefixes: event files through epath."""

    def open(self, p: str) -> GrowingFile:
        return GrowingFile(p, binary=True)

    def directory_check(self, p: str) -> None:
        makedirs(p)


def register_tensorboard() -> None:
    """Lets tensorboardX write event files to every URL scheme epath serves (it knows
    ``s3://`` and, with google-cloud-storage, ``gs://`` by itself; this makes them
    one route with the rest of a workdir)."""
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
    for scheme in URL_SCHEMES:
        record_writer.register_writer_factory(scheme, _EventFiles())


def copy(source: PathLike, destination: PathLike) -> None:
    """Copies one file, local or remote, to a local or remote path (its folder made)."""
    makedirs(os.path.dirname(os.fspath(destination)) or ".")
    with open_file(source, "rb") as src, open_file(destination, "wb") as dst:
        dst.write(src.read())


def main(argv: list[str]) -> int:
    """``python -m adverse_vision.storage copy SOURCE DESTINATION`` (the launch
    scripts copy each worker's log into the bucket with it)."""
    if len(argv) != 3 or argv[0] != "copy":
        print("usage: python -m adverse_vision.storage copy SOURCE DESTINATION", file=sys.stderr)
        return 2
    try:
        copy(argv[1], argv[2])
    except OSError as e:
        print(f"error: cannot copy {argv[1]} to {argv[2]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
