"""Where the page's downloadable files are written: one folder per request under a private temporary
directory, only the most recent `keep` folders kept, so a long-running server does not fill the disk."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
from pathlib import Path


class OutputStore:
    """Request folders `<root>/<number>/`, oldest deleted beyond `keep`; `close` removes the root."""

    def __init__(self, keep: int = 64, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nextscale-ui-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._numbers = itertools.count()
        self._folders: list[Path] = []
        self._lock = threading.Lock()

    def new_folder(self) -> Path:
        with self._lock:
            folder = self.root / f"{next(self._numbers):06d}"
            folder.mkdir()
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.pop(0), ignore_errors=True)
            return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
