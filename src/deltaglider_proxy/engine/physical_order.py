"""S3's physical listing order over a backend's logical listing order (layout access).

:meth:`Backend.list` yields names in :func:`logical_sort_key` order, where ``x.delta`` sorts
as ``x``; a raw (layout) listing must present the same names in S3's order, the UTF-8 byte
order of the names themselves. The two disagree whenever a name sorts between ``x`` and
``x.delta``: logically ``a.zip`` (the delta) < ``a.zip-1``, physically ``a.zip-1`` <
``a.zip.delta``.

A name's logical key is a prefix of the name, so physical >= logical for every entry. Once an
entry with logical key L has come from the backend, every later one has logical key >= L and
therefore physical name >= L: held entries whose physical name is below L are final and can be
released in heap order. Only ``Q.delta`` entries wait, and only until the listing passes
``Q.delta`` logically, so the heap stays tiny.

The cursor works the other way round: entries physically after cursor S must all come from the
backend, whose ``start_after`` bound is logical and exclusive. A ``Q.delta`` name sorts after S
while Q sorts before it only when Q is a proper prefix of S (a name that differs from S before
its end sorts on the same side of S with or without the suffix). So the backend listing starts
just below the shortest prefix Q of S with ``Q + ".delta" > S``, and entries not physically
after S are dropped here.
"""

from __future__ import annotations

import heapq
import itertools

from deltaglider_proxy.storage.base import CommonPrefix, StoredObject, logical_sort_key
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX

Entry = StoredObject | CommonPrefix


def physical_key(name: str) -> bytes:
    """A name as S3 orders it (UTF-8 bytes; surrogatepass keeps any str encodable)."""
    return name.encode("utf-8", "surrogatepass")


def logical_start_after(cursor: str) -> str:
    """A ``start_after`` for :meth:`Backend.list` that still yields every name physically
    after ``cursor`` (and, harmlessly, a few names that are not)."""
    if not cursor:
        return ""
    target = physical_key(cursor)
    shortest = len(cursor)
    for index, char in enumerate(cursor):
        # ".delta" > cursor[index:] needs a first character <= "."; cheap test first.
        if char <= "." and physical_key(cursor[:index] + DELTA_SUFFIX) > target:
            shortest = index
            break
    # The backend's bound is exclusive and Q itself must be listed: start one character short.
    return cursor[: shortest - 1] if shortest > 0 else ""


class PhysicalOrder:
    """Reorders one logically ordered listing into physical order, from a cursor onwards.

    Feed every entry from :meth:`Backend.list` (called with :func:`logical_start_after`) to
    :meth:`add`; :attr:`released` grows with entries in their final order; call :meth:`finish`
    when the backend has no more. With ``delimiter`` set, names are rolled up here (for
    delimiters the backend cannot roll up itself); common prefixes the backend produced pass
    through as they are.
    """

    def __init__(self, prefix: str = "", cursor: str = "", delimiter: str | None = None) -> None:
        self._prefix = prefix
        self._after = physical_key(cursor)
        self._delimiter = delimiter or None
        self._heap: list[tuple[bytes, int, Entry]] = []
        self._serial = itertools.count()  # keeps heap tuples from comparing entries
        self._rolled: set[str] = set()
        self.released: list[Entry] = []

    @property
    def held(self) -> int:
        return len(self._heap)

    def add(self, entry: Entry) -> None:
        """The next entry of the backend's (logically ordered) listing."""
        if isinstance(entry, StoredObject):
            bound = logical_sort_key(entry.name)
            self._hold(self._roll_up(entry))
        else:
            bound = physical_key(entry.name)
            self._hold(entry)
        while self._heap and self._heap[0][0] < bound:
            self.released.append(heapq.heappop(self._heap)[2])

    def finish(self) -> None:
        while self._heap:
            self.released.append(heapq.heappop(self._heap)[2])

    def _roll_up(self, entry: StoredObject) -> Entry | None:
        if self._delimiter is None or not entry.name.startswith(self._prefix):
            return entry
        rest = entry.name[len(self._prefix) :]
        at = rest.find(self._delimiter)
        if at < 0:
            return entry
        rolled = self._prefix + rest[: at + len(self._delimiter)]
        if rolled in self._rolled:
            return None
        self._rolled.add(rolled)
        return CommonPrefix(rolled)

    def _hold(self, entry: Entry | None) -> None:
        if entry is None:
            return
        key = physical_key(entry.name)
        if key > self._after:
            heapq.heappush(self._heap, (key, next(self._serial), entry))
