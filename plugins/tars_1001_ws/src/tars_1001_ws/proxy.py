"""A fault-injecting TCP proxy: the network failures TARS-1001 must survive, on real sockets.

Put it between a client and a hub and it can reset every connection (RST, what a crashed LB or a NAT
timeout looks like), blackhole them (keep both sockets open but forward nothing: the half-open, silent
disconnect no error ever reports), delay traffic, or refuse new connections for a while (stop
listening). Used by the tests, by ``tars_verify`` against the real target hub, and by the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: the two stream pairs and the two pump tasks."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    blackholed: bool = False


class FaultProxy:
    """``async with FaultProxy(hub_host, hub_port) as proxy: connect to proxy.port, then proxy.reset()``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.delay = 0.0
        self.blackhole_new = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url(self, path: str = "/") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        return len(self._pipes)

    # -- faults ------------------------------------------------------------------------------------
    def reset(self) -> int:
        """Abort every proxied connection with a TCP RST on both sides; returns how many."""
        pipes = list(self._pipes)
        for pipe in pipes:
            self._kill(pipe)
        return len(pipes)

    def blackhole(self, *, new_connections: bool = False) -> int:
        """Silently stop forwarding on every current connection (sockets stay open, nothing is closed).

        With ``new_connections`` later connections are accepted but blackholed too, until :meth:`heal`.
        A blackholed connection never recovers: its bytes are gone, as on a real broken path.
        """
        self.blackhole_new = new_connections
        pipes = [p for p in self._pipes if not p.blackholed]
        for pipe in pipes:
            pipe.blackholed = True
        return len(pipes)

    def heal(self) -> None:
        """New connections are forwarded normally again (no delay, no blackhole)."""
        self.blackhole_new = False
        self.delay = 0.0

    async def refuse(self) -> None:
        """Stop listening: new connections get ECONNREFUSED until :meth:`accept` (current ones live on)."""
        if self._server is not None:
            self._server.close()  # closes the listening socket now; wait_closed() would wait for clients
            self._server = None
            await asyncio.sleep(0)

    async def accept(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        await self.refuse()
        self.reset()
        await asyncio.sleep(0)

    # -- plumbing ----------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        pipe = _Pipe(writer, up_writer, blackholed=self.blackhole_new)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(pipe, reader, up_writer)),
            asyncio.create_task(self._pump(pipe, up_reader, writer)),
        ]
        await asyncio.gather(*pipe.tasks, return_exceptions=True)
        self._pipes.discard(pipe)

    async def _pump(self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if pipe.blackholed:
                    continue  # keep reading so the sender sees no back-pressure either: truly silent
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            if not pipe.blackholed:
                with contextlib.suppress(OSError):
                    writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            if not pipe.blackholed:  # behind a blackhole the other side never learns of it
                self._kill(pipe)
        if pipe.blackholed:
            await asyncio.Event().wait()  # hold the other side open until reset/close

    def _kill(self, pipe: _Pipe) -> None:
        _rst(pipe.client)
        _rst(pipe.upstream)
        for task in pipe.tasks:
            task.cancel()
        self._pipes.discard(pipe)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a RST instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
