"""Shared plumbing of the SQLite stores: open read-only, or create atomically.

A store opened with ``mode='w'`` is written into a hidden temporary file in
the destination directory, with autocommit off; :meth:`SqliteFile.close`
commits once and renames it to the final name, so readers never see a
half-written store. On an error inside a ``with`` block the temporary file
is deleted and an existing store of the same name is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from sqlitedict import SqliteDict

from .arrays import StoreError

MODES = ("r", "w")


def open_table(path: Path, tablename: str, flag: str, encode, decode, journal_mode="DELETE") -> SqliteDict:
    """Open one sqlitedict table with bytes encode/decode and string keys."""
    return SqliteDict(
        str(path),
        tablename=tablename,
        flag=flag,
        autocommit=False,
        journal_mode=journal_mode,
        encode=encode,
        decode=decode,
        outer_stack=False,
    )


class SqliteFile:
    """A store file: read-only, or written to a temporary name and renamed on close.

    Parameters
    ----------
    path : path-like
        Final file name.
    mode : {'r', 'w'}
        ``'r'`` reads an existing store; ``'w'`` creates a new one (replacing
        any file of that name when closed successfully).
    kind : str
        What the store holds, for error messages.
    """

    def __init__(self, path, mode: str, kind: str):
        if mode not in MODES:
            raise ValueError(f"{kind} {path}: mode must be one of {MODES}, not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.kind = kind
        self._tables: list[SqliteDict] = []
        self._closed = False
        if mode == "r":
            if not self.path.is_file():
                raise StoreError(f"{kind} {self.path} does not exist")
            self.work_path = self.path
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            os.close(handle)
            os.unlink(temporary)
            self.work_path = Path(temporary)

    def table(self, tablename: str, encode, decode) -> SqliteDict:
        """Open a table of this file (journal off while writing: the file is
        discarded on failure anyway)."""
        flag = "r" if self.mode == "r" else "c"
        journal = "DELETE" if self.mode == "r" else "OFF"
        try:
            table = open_table(self.work_path, tablename, flag, encode, decode, journal)
        except (RuntimeError, sqlite3.Error) as error:
            raise StoreError(f"{self.kind} {self.path}: cannot open table {tablename!r}: {error}") from error
        self._tables.append(table)
        return table

    def commit(self) -> None:
        """Commit every open table."""
        for table in self._tables:
            table.commit()

    def close(self, success: bool = True) -> None:
        """Close; in write mode publish the file (``success``) or delete it."""
        if self._closed:
            return
        self._closed = True
        if self.mode == "w" and success:
            self.commit()
        for table in self._tables:
            table.close(do_log=False, force=not success)
        if self.mode == "w":
            if success:
                os.replace(self.work_path, self.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.work_path)

    @property
    def closed(self) -> bool:
        return self._closed
