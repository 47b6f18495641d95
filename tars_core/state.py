"""A plugin's own persistent facts (``ctx.state``): one JSON document per plugin, written atomically.

Rollback often needs something apply saw: the flag value it replaced, the indexes it created, the files
it overwrote. Each plugin used to invent a file for that; a half-written file after a SIGKILL then made
the next rollback fail. Here every save goes to a temporary file in the same folder, is fsynced, and is
renamed over the old one, so a reader sees the old document or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from tars_core.errors import FixError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers (Prometheus, Grafana, the next run) see the old
    content or the new, never half: temp file in the same folder, fsync, rename over the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
