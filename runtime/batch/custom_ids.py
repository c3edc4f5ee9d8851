"""The custom_ids a file has used so far, in memory that does not grow with the file.

A Python set of 64-bit digests costs ~78 bytes a request (the int object, the slot, the spare room):
78 MB of the API's memory for one 1,000,000-request file, on top of everything else it holds. Here the
digests live in a private temporary SQLite database instead: SQLite keeps a few MB of its pages in
memory and spills the rest to a temporary file, which it deletes when the connection closes.
"""

from __future__ import annotations

import hashlib
import sqlite3

PAGE_CACHE_KIB = 8192  # what SQLite may hold in memory; a 1M-request file's digests take ~16 MB on disk


class SeenCustomIds:
    """`add(custom_id)` says whether the id is new, and remembers it. One thread: the one that made it."""

    def __init__(self, page_cache_kib: int = PAGE_CACHE_KIB) -> None:
        # "": a private database on disk, created on first spill and deleted on close
        self._db = sqlite3.connect("", isolation_level=None)
        for pragma in (f"cache_size = -{page_cache_kib}", "journal_mode = OFF", "synchronous = OFF"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE seen (digest INTEGER PRIMARY KEY)")
        self._db.execute("BEGIN")  # one transaction: no commit per row
        self._insert = self._db.cursor()

    def add(self, custom_id: str) -> bool:
        """True if `custom_id` was not seen before (it is now); False for a duplicate."""
        self._insert.execute("INSERT OR IGNORE INTO seen VALUES (?)", (digest(custom_id),))
        return self._insert.rowcount == 1

    def close(self) -> None:
        self._db.close()


def digest(custom_id: str) -> int:
    """A signed 64-bit digest (SQLite's integer): two of 1,000,000 ids collide with odds of ~3e-8."""
    # surrogatepass: a JSON "\\ud800" escape gives a str that UTF-8 cannot encode, and must not crash intake
    data = custom_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
