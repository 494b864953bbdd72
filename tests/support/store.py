"""Writing objects into an in-process MemoryStore the short way (unit tests of store readers)."""

from __future__ import annotations

from minisw.manager.state.store import MemoryStore, WriteTx
from minisw.proto import objects_pb2 as pb

__all__ = ["upsert"]


async def upsert(store: MemoryStore, *objects: pb.Node | pb.Task | pb.Service) -> None:
    """Create each object, or update it at its current version, in one transaction."""

    def fn(tx: WriteTx) -> None:
        for obj in objects:
            current = {pb.Node: tx.get_node, pb.Task: tx.get_task, pb.Service: tx.get_service}[type(obj)](obj.id)
            if current is None:
                tx.create(obj)
            else:
                obj.meta.version.index = current.meta.version.index
                tx.update(obj)

    await store.update(fn)
