"""What every binder holding delayed records shares: one mover per destination, running
while the destination has a producer or a consumer in this binder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Mover", "Movers"]


class Mover(Protocol):
    """Moves one destination's due records into it (each binder its own way)."""

    def start(self) -> None: ...

    async def close(self) -> None: ...


class Movers:
    """The movers of one binder, counted by their destination's clients."""

    def __init__(self, make: Callable[[str], Mover]) -> None:
        self._make = make
        self._movers: dict[str, tuple[Mover, int]] = {}

    def get(self, destination: str) -> Mover | None:
        found = self._movers.get(destination)
        return found[0] if found is not None else None

    def acquire(self, destination: str) -> None:
        """One more client of ``destination``; its mover starts with the first."""
        mover, users = self._movers.get(destination, (None, 0))
        if mover is None:
            mover = self._make(destination)
            mover.start()
        self._movers[destination] = (mover, users + 1)

    async def release(self, destination: str) -> None:
        """One client fewer; the mover stops with the last."""
        mover, users = self._movers.get(destination, (None, 0))
        if mover is None:
            return
        if users > 1:
            self._movers[destination] = (mover, users - 1)
            return
        del self._movers[destination]
        await mover.close()

    async def close(self) -> None:
        """Stop every mover (the binder closes)."""
        movers = [mover for mover, _ in self._movers.values()]
        self._movers.clear()
        for mover in movers:
            await mover.close()
