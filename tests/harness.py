"""Drive the core directly (no FUSE) over any store: the same wiring the daemon uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from cachefs.config import load
from cachefs.daemon.run import Daemon
from cachefs.nodes import Node
from cachefs.store import Store


def make_config(cache_dir: Path, **flags: Any) -> Any:
    values = {"cache_dir": str(cache_dir), "store": "s3://unused"}
    values.update(flags)
    return load(values, env={})


class Core:
    """A running core with helpers that read like shell commands."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.fs = daemon.fs
        self.store = daemon.store

    async def node(self, path: str) -> Node:
        node = await self.fs.ns.resolve(path)
        assert node is not None, f"{path} not found"
        return node

    async def cat(self, path: str) -> bytes:
        node = await self.node(path)
        fh, _ = await self.fs.open(node, os.O_RDONLY)
        try:
            chunks = []
            offset = 0
            while True:
                data = await self.fs.read(fh, offset, 128 << 10)
                if not data:
                    break
                chunks.append(data)
                offset += len(data)
            return b"".join(chunks)
        finally:
            await self.fs.release(fh)

    async def write(self, path: str, data: bytes, mode: int = 0o644) -> Node:
        parent_path, _, name = path.rpartition("/")
        parent = await self.node(parent_path)
        existing = await self.fs.lookup(parent, name)
        if existing is None:
            node, fh = await self.fs.create(parent, name, mode, os.O_WRONLY, 0, 0)
        else:
            node = existing
            fh, _ = await self.fs.open(node, os.O_WRONLY | os.O_TRUNC)
        try:
            if data:
                await self.fs.write(fh, 0, data)
            await self.fs.flush(fh)
        finally:
            await self.fs.release(fh)
        return node

    async def ls(self, path: str = "") -> list[str]:
        return [name for name, _ in await self.fs.readdir(await self.node(path))]


@contextlib.asynccontextmanager
async def running_core(store: Store, cache_dir: Path, prefix: str = "",
                       **flags: Any) -> AsyncIterator[Core]:
    await trio.Path(cache_dir).mkdir(parents=True, exist_ok=True)
    config = make_config(cache_dir, **flags)
    daemon = Daemon(config, cache_dir / "mnt", store, prefix)
    daemon.start()
    try:
        async with daemon.running():
            yield Core(daemon)
            with trio.move_on_after(30):
                await daemon.finish()
    finally:
        daemon.close()
