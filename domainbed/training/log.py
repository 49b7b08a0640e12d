"""The run's log: every line printed also lands in the run directory's log.txt."""

import sys
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """Callable: `log(message)` prints (above any progress bar) and appends to `path`; with
    `echo` False it only writes the file (a data-parallel process other than rank 0 has neither)."""

    def __init__(self, path=None, echo: bool = True):
        self.path = Path(path) if path else None
        self.echo = echo
        self._handle = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")

    def __call__(self, message="") -> None:
        text = str(message)
        if self.echo:
            tqdm.write(text, file=sys.stdout)
        if self._handle:
            self._handle.write(text + "\n")
            self._handle.flush()

    def to_file(self, message) -> None:
        """Append to log.txt only (what the caller prints itself, such as an error)."""
        if self._handle:
            self._handle.write(str(message) + "\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None
