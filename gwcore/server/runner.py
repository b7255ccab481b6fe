"""Running the front door: the event loop, listening sockets, signals, graceful shutdown, workers.

Owns ``serve`` (blocking, for ``gwcore serve``), ``running_server`` (in-process, for tests and
embedding) and the worker supervisor (N forked processes on one port with SO_REUSEPORT, restarted
when they die). Never parses HTTP: ``gwcore.server.protocol`` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator

from gwcore.server.app import App
from gwcore.server.config import ServerConfig
from gwcore.server.protocol import HttpProtocol, ServerState

__all__ = ["loop_implementation", "new_event_loop", "running_server", "serve"]

logger = logging.getLogger("gwcore.server")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when importable (``GWCORE_LOOP=asyncio`` forces the stdlib loop)."""
    if os.environ.get("GWCORE_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_implementation(loop: asyncio.AbstractEventLoop) -> str:
    module = type(loop).__module__.split(".")[0]
    return "uvloop" if module == "uvloop" else "asyncio"


@contextlib.asynccontextmanager
async def running_server(
    app: App,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    config: ServerConfig | None = None,
    reuse_port: bool = False,
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``app`` on the running loop; yields the bound ``(host, port)`` (port 0: ephemeral).

    On exit: stop accepting, let responses in flight finish (up to the drain timeout), close the
    connections, run ``on_shutdown``.
    """
    config = config if config is not None else app.config
    loop = asyncio.get_running_loop()
    state = ServerState(app, config, loop)
    for hook in app.on_startup:
        await hook()
    server = await loop.create_server(
        lambda: HttpProtocol(state),
        host,
        port,
        backlog=config.backlog,
        reuse_port=reuse_port or None,
    )
    state.start()
    bound = server.sockets[0].getsockname()
    try:
        yield bound[0], bound[1]
    finally:
        await _drain(server, state, config.timeouts.drain)
        for hook in app.on_shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("on_shutdown hook failed")


async def _drain(server: asyncio.AbstractServer, state: ServerState, timeout: float) -> None:
    server.close()  # stop accepting; existing connections live on
    state.shutting_down = True
    for conn in list(state.connections):
        conn.shutdown()
    loop = state.loop
    deadline = loop.time() + timeout
    while state.connections and loop.time() < deadline:
        for conn in list(state.connections):
            conn.close_if_lingering()  # its response is out: do not wait for the client's EOF
        await asyncio.sleep(0.02)
    if state.connections:
        logger.warning(
            "drain timeout (%.1f s): closing %d connection(s)", timeout, len(state.connections)
        )
        for conn in list(state.connections):
            conn.force_close()
        await asyncio.sleep(0)
    state.stop()


async def _worker_main(app: App, config: ServerConfig, reuse_port: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            logger.warning("second signal (%s): exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info("%s: shutting down gracefully", signal.Signals(signum).name)
        stop.set()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    parent = os.getppid()

    def watch_parent() -> None:  # a worker whose supervisor died shuts itself down
        if os.getppid() != parent:
            logger.warning("supervisor exited: shutting down")
            stop.set()
        else:
            loop.call_later(1.0, watch_parent)

    if reuse_port:
        loop.call_later(1.0, watch_parent)
    async with running_server(
        app, config.host, config.port, config=config, reuse_port=reuse_port
    ) as (host, port):
        frozen = settle_heap()
        logger.info(
            "listening on http://%s:%d (pid %d, loop %s, workers %d)",
            host,
            port,
            os.getpid(),
            loop_implementation(loop),
            config.workers,
        )
        logger.debug("start-up heap: %d objects frozen", frozen)
        await stop.wait()
        logger.info("draining in-flight requests (up to %.0f s)", config.timeouts.drain)
    logger.info("stopped (pid %d)", os.getpid())
    return 0


def settle_heap() -> int:
    """Once a worker is up (modules, config, providers, model lists, pools): collect what
    start-up left behind, then freeze the rest (``gc.freeze``) for the process's life. The
    collector's full passes then walk what serving made, not the ~40k start-up objects that live
    as long as the process: a full pass over those took 1.7M instructions (callgrind, Python
    3.11), a pause of a millisecond or so for every stream in flight. Returns the number of
    objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run_worker(app: App, config: ServerConfig, *, reuse_port: bool = False) -> int:
    """Serve in this process until SIGTERM/SIGINT; return the exit code."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_worker_main(app, config, reuse_port))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def serve(app: App, config: ServerConfig | None = None) -> int:
    """Run the gateway's HTTP server (blocking): one worker in-process, or a supervisor of N."""
    config = config if config is not None else app.config
    if config.workers <= 1:
        return run_worker(app, config)
    return _supervise(app, config)


def _supervise(app: App, config: ServerConfig) -> int:
    """Fork ``config.workers`` workers sharing the port; restart the ones that die."""
    reservation: socket.socket | None = None
    if config.port == 0:  # pick the port once so that every worker binds the same one
        reservation = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((config.host, 0))
        config = config.with_(port=reservation.getsockname()[1])
    children: dict[int, float] = {}
    signals_seen = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                os.setpgid(0, 0)  # the terminal's Ctrl-C reaches the supervisor only
                for signum in _SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                if reservation is not None:
                    reservation.close()
                code = run_worker(app, config, reuse_port=True)
            except BaseException:
                logger.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logger.info("%s: stopping %d worker(s)", signal.Signals(signum).name, len(children))
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for signum in _SIGNALS:
        signal.signal(signum, on_signal)
    logger.info(
        "supervisor pid %d: starting %d workers on %s:%d",
        os.getpid(),
        config.workers,
        config.host,
        config.port,
    )
    for _ in range(config.workers):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or signals_seen:
            continue
        logger.warning("worker %d exited (%s); restarting", pid, os.waitstatus_to_exitcode(status))
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)  # a worker that dies at once must not spin the supervisor
        if not signals_seen:
            spawn()
    if reservation is not None:
        reservation.close()
    logger.info("supervisor stopped")
    return 0
