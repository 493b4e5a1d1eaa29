"""A TCP proxy the tests control, between a worker and PostgreSQL: cut, restore, slow down.

It runs its own event loop in a thread, so sync and async tests can drive it alike. A target
host that is a directory is PostgreSQL's Unix socket directory (as an embedded server uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._cuts = 0  # how many times the proxy was cut: a connection accepted before one is dropped
        # From a cut until the next listen: a connection the kernel accepted before the listener
        # closed can reach `_accept` only after the cut began (it read the new `_cuts` and went
        # through, seen once in CI as rows applied while the database was "unreachable").
        self._refusing = False
        # While clear, nothing is forwarded (a peer that stopped answering); `held` counts the
        # chunks that waited for it.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held = 0

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._refusing = False
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cuts = self._cuts
        if self._refusing:
            writer.transport.abort()
            return
        host, port = self.target
        try:
            if host.startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        if self._cuts != cuts or self._refusing:
            # Cut while this connection reached the target: `_cut` did not see it, and it must
            # not outlive the cut (a client would go on talking to the database).
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if not self._flowing.is_set():
                    self.held += 1
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _cut(self) -> None:
        self._refusing = True
        self._cuts += 1
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            # An abortive close: the peers see a reset, as when a network path dies.
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        if self._server is None:
            self._call(self._listen())

    def set_delay(self, seconds: float) -> None:
        """Delay each chunk forwarded in either direction (a slow database)."""
        self.delay_s = seconds

    def hold(self) -> None:
        """Stop forwarding in either direction, connections kept open, until `release`."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    async def _end_tasks(self) -> None:
        # The connections' tasks, their transports aborted by `_cut`, end before the loop stops:
        # none is left pending ("Task was destroyed but it is pending" at exit).
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def close(self) -> None:
        self.release()  # held chunks' tasks end with their aborted connections
        with contextlib.suppress(Exception):
            self._call(self._cut())
        with contextlib.suppress(Exception):
            self._call(self._end_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def proxied(dsn: str, proxy: TcpProxy, password: str | None = None) -> str:
    """The same database, reached through the proxy (with a password planted, if given)."""
    params = conninfo_to_dict(dsn)
    params.update(host="127.0.0.1", port=str(proxy.port))
    if password:
        params["password"] = password
    return make_conninfo(**params)


def pg_address(dsn: str) -> tuple[str, int]:
    """Where `dsn`'s server listens (a directory for a Unix socket), for a proxy in front of it."""
    params = conninfo_to_dict(dsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
