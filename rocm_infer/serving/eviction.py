"""Which loaded models a pool unloads to make room for another: a pure function, tested alone.

:func:`plan_load` takes what the pool holds (:class:`Resident`), what the new
model needs, and the limits (a count, a memory budget, the machine's free
memory), and returns the models to unload, least recently used first, or
that the model cannot fit now without unloading a model someone is using.
A model is never unloaded while leased, while pinned, or while it is still
loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Plan", "Resident", "plan_load"]


@dataclass(frozen=True, slots=True)
class Resident:
    """A model the pool holds (loaded, or being loaded), as the eviction policy sees it."""

    name: str
    memory: int
    leases: int = 0
    pinned: bool = False
    last_used: float = 0.0
    loading: bool = False

    @property
    def evictable(self) -> bool:
        return not self.loading and not self.pinned and self.leases == 0


@dataclass(frozen=True, slots=True)
class Plan:
    """``evict``: the models to unload, in order; ``fits``: whether the new model fits after that
    (False: it must wait for a lease to end, and nothing should be unloaded for it yet)."""

    evict: tuple[str, ...]
    fits: bool


def plan_load(
    residents: Sequence[Resident],
    need: int,
    *,
    max_loaded: int | None = None,
    budget: int | None = None,
    free: int | None = None,
) -> Plan:
    """How to make room for a model that needs ``need`` bytes.

    ``max_loaded``: models held at most (the new one included); ``budget``:
    bytes all held models may take together; ``free``: bytes the machine has
    free now (unloading a model gives its memory back). None means no such
    limit. Idle, unpinned models go first, least recently used first; only as
    many as it takes.
    """
    held = len(residents)
    used = sum(r.memory for r in residents)
    freed = 0
    evict: list[str] = []

    def fits() -> bool:
        if max_loaded is not None and held - len(evict) + 1 > max_loaded:
            return False
        if budget is not None and used - freed + need > budget:
            return False
        return free is None or need <= free + freed

    candidates = sorted((r for r in residents if r.evictable), key=lambda r: (r.last_used, r.name))
    for resident in candidates:
        if fits():
            break
        evict.append(resident.name)
        freed += resident.memory
    if not fits():
        return Plan((), False)
    return Plan(tuple(evict), True)
