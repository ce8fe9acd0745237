"""Logical listing order over S3's physical key order (storage.md §4.3).

S3 lists keys in UTF-8 byte order of their *physical* names, but :meth:`Backend.list` promises
:func:`logical_sort_key` order, where ``x.delta`` sorts as ``x``. The two disagree whenever a
name sorts between ``x`` and ``x.delta``: physically ``a.zip-1`` < ``a.zip.delta``, logically
``a.zip`` (the delta) < ``a.zip-1``.

:class:`LogicalOrder` restores logical order on a physically ordered stream with a heap. Once
physical name P has been seen, every later name Q' is > P. Its logical key is Q' itself (> P)
unless Q' = Q + ``.delta``; then Q' > P forces Q to be a prefix of P with ``.delta`` > the rest
of P (a name that differs from P before its end sorts on the same side of P with or without the
suffix). So the shortest such prefix bounds every logical key still to come, and held entries
below it are final.

The bound only lags while names have a byte <= ``.`` at some position (``app-1.zip`` holds
everything from ``app`` on until a name past ``app.delta`` shows up), which on a listing of
nothing but ``app-*`` names is the whole listing. :meth:`LogicalOrder.blocking_names` then
tells the few ``Q.delta`` names whose existence decides the bound, so the caller can look them
up directly and keep the heap bounded (:meth:`LogicalOrder.add_lookahead`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field

from deltaglider_proxy.storage.base import CommonPrefix, StorageError, StoredObject, logical_sort_key
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX

Entry = StoredObject | CommonPrefix

_DELTA = DELTA_SUFFIX.encode()
_DOT = _DELTA[0]


def raw_name(name: str) -> bytes:
    """A name as S3 orders it (UTF-8 bytes; surrogatepass keeps any str encodable)."""
    return name.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, order=True)
class _Held:
    logical: bytes
    physical: bytes  # tie-break: ``x`` before ``x.delta``, as the filesystem backend orders them
    entry: Entry = field(compare=False)


class LogicalOrder:
    """Reorders the entries of one physical listing into logical order.

    Feed every listed entry (objects and common prefixes, strictly ascending physical names)
    to :meth:`add`, collect :meth:`ready` after each page and :meth:`finish` at the end.
    Entries whose logical key is not above ``start_after`` are dropped.
    """

    def __init__(self, prefix: str = "", start_after: str = "", delimiter: str | None = None) -> None:
        self._prefix = raw_name(prefix)
        self._after = raw_name(start_after)
        self._delimiter = raw_name(delimiter) if delimiter else None
        self._heap: list[_Held] = []
        self._last: bytes | None = None
        # ``Q.delta`` names already looked up out of order: the stream's copy is skipped.
        self._settled: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, entry: Entry) -> None:
        """The next entry of the physical stream."""
        physical = raw_name(entry.name)
        if self._last is not None and physical <= self._last:
            if physical == self._last:
                return  # a page boundary repeated the last entry: harmless
            raise StorageError(
                f"the S3 backend listed {entry.name!r} after a later name; it does not list in "
                "UTF-8 byte order, which the S3 API requires"
            )
        self._last = physical
        if physical in self._settled:
            self._settled.discard(physical)
            return
        self._push(entry, physical)

    def add_lookahead(self, name: str, entry: StoredObject | None) -> None:
        """What a direct lookup of ``name`` (one of :meth:`blocking_names`) found."""
        physical = raw_name(name)
        self._settled.add(physical)
        if entry is not None:
            self._push(entry, physical)

    def ready(self) -> list[Entry]:
        """Held entries no later name can precede, in logical order."""
        if self._last is None:
            return []
        last = self._last
        self._settled = {name for name in self._settled if name > last}
        bound = (next(self._open_candidates(), last), last)
        out: list[Entry] = []
        while self._heap and (self._heap[0].logical, self._heap[0].physical) <= bound:
            out.append(heapq.heappop(self._heap).entry)
        return out

    def finish(self) -> list[Entry]:
        """Everything still held: the stream has ended."""
        out = [held.entry for held in sorted(self._heap)]
        self._heap.clear()
        return out

    def blocking_names(self) -> list[str]:
        """Physical ``Q.delta`` names that may still come and would sort before some held entry;
        once each is looked up, :meth:`ready` can release everything up to the last name seen.

        Every held entry counts, not only the first: with ``a-`` and ``a--`` held, ``a-.delta``
        (logical ``a-``) may still come and sorts between them, though not before the first."""
        if not self._heap:
            return []
        highest = max(held.logical for held in self._heap)
        return [(q + _DELTA).decode("utf-8", "surrogatepass") for q in self._open_candidates() if q < highest]

    def _push(self, entry: Entry, physical: bytes) -> None:
        logical = logical_sort_key(entry.name) if isinstance(entry, StoredObject) else physical
        if logical > self._after:
            heapq.heappush(self._heap, _Held(logical, physical, entry))

    def _open_candidates(self) -> Iterator[bytes]:
        """Ascending logical keys Q < last for which ``Q.delta`` may still be listed."""
        last = self._last
        assert last is not None
        for k in range(len(last)):
            # Only a byte <= '.' can start a remainder below ".delta"; comparing six bytes
            # decides "rest < .delta" as well as comparing the whole rest would.
            if last[k] > _DOT or last[k : k + len(_DELTA)] >= _DELTA:
                continue
            logical = last[:k]
            physical = logical + _DELTA
            if logical <= self._after or not physical.startswith(self._prefix):
                continue
            if self._delimiter is not None and self._delimiter in physical[len(self._prefix) :]:
                continue  # it would be listed rolled up into a common prefix, which sorts after last
            if physical in self._settled:
                continue
            yield logical
