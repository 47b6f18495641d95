"""A plugin's own persistent facts (``ctx.state``): one JSON document per plugin, written atomically.

Rollback often needs something apply saw: the flag value it replaced, the indexes it created, the files
it overwrote. Each plugin used to invent a file for that; a half-written file after a SIGKILL then made
the next rollback fail. Here every save goes to a temporary file in the same folder, is fsynced, and is
renamed over the old one, so a reader sees the old document or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from tars_core.errors import FixError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers (Prometheus, Grafana, the next run) see the old
    content or the new, never half (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename over the old file.

    The file keeps the mode and owner of the file it replaces: the temp file is created 0600, and a
    dashboard that came back 0600 after apply and rollback was unreadable by the Grafana that owns it.
    A new file gets what ``open()`` would give it (0666 less the umask); ``mode`` overrides both (a
    rollback putting back the mode it recorded).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is None:
                mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~_umask()
            os.fchmod(fh.fileno(), mode)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give a file away
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, from /proc (setting it to read it would race with other threads' files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class PluginStateStore(MutableMapping[str, Any]):
    """A JSON object on disk, read on every access (cheap: a few hundred bytes) so runs never go stale.

    Values must be JSON-serialisable. ``store["k"] = v`` and ``del store["k"]`` save immediately;
    :meth:`update` saves once for several keys.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            raise FixError(f"plugin state {self.path} is not valid JSON; restore it or delete it") from None
        if not isinstance(data, dict):
            raise FixError(f"plugin state {self.path} is not a JSON object; restore it or delete it")
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def update(self, *args: Any, **kwargs: Any) -> None:
        data = self.load()
        data.update(*args, **kwargs)
        self.save(data)

    def __getitem__(self, key: str) -> Any:
        return self.load()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        data = self.load()
        del data[key]
        self.save(data)

    def __iter__(self) -> Iterator[str]:
        return iter(self.load())

    def __len__(self) -> int:
        return len(self.load())
