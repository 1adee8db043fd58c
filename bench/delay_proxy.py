"""A TCP proxy on loopback that makes a server look far away.

Every chunk of bytes, in either direction, is delivered `delay` seconds after
it was read, so a request/answer round trip costs 2 x delay more than it
would. Delivery is scheduled, not serialized: a stream of chunks keeps its
throughput, only its latency grows. A new connection also costs one extra
round trip before its first byte reaches the server, as a real TCP handshake
would (no TLS: AnkiWeb's HTTPS would add one more round trip per connection).

    python bench/delay_proxy.py --upstream 127.0.0.1:8080 --delay 0.05 --port 8081

or from Python:

    with DelayProxy(("127.0.0.1", 8080), delay=0.05) as proxy:
        proxy.url   # http://127.0.0.1:PORT/
"""

import argparse
import asyncio
import socket
import threading
import time


async def _pump(reader, writer, delay, start_at):
    """Copy reader to writer, each chunk delay seconds late, in order."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((max(loop.time() + delay, start_at), data or None))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        if not sender.done():
            await asyncio.gather(sender, return_exceptions=True)


class DelayProxy:
    """Listen on 127.0.0.1:port; relay to upstream (host, port) with a one-way delay."""

    def __init__(self, upstream, delay=0.05, port=0, handshake_rtts=1):
        self.upstream = upstream
        self.delay = delay
        self.port = port
        self.handshake = handshake_rtts * 2 * delay
        self.connections = 0
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    async def _handle(self, client_reader, client_writer):
        self.connections += 1
        loop = asyncio.get_running_loop()
        # the client's first bytes wait for the handshake's round trip(s)
        start_at = loop.time() + self.handshake + self.delay
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                _pump(client_reader, server_writer, self.delay, start_at),
                _pump(server_reader, client_writer, self.delay, 0),
                return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    async def _serve(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self):
        """Serve from a daemon thread; returns once listening."""
        def run():
            self._loop = loop = asyncio.new_event_loop()
            self._main = loop.create_task(self._serve())
            try:
                loop.run_until_complete(self._main)
            except asyncio.CancelledError:
                pass
            finally:
                rest = asyncio.all_tasks(loop)
                for task in rest:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
                loop.close()
        self._thread = threading.Thread(target=run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("delay proxy did not start")
        return self

    def stop(self):
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def _host_port(text):
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--upstream", required=True, type=_host_port,
                        help="HOST:PORT of the real server")
    parser.add_argument("--delay", type=float, default=0.05,
                        help="one-way delay in seconds (a round trip costs twice this)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--handshake-rtts", type=float, default=1,
                        help="round trips a new connection costs before its first byte")
    args = parser.parse_args()
    proxy = DelayProxy(args.upstream, args.delay, args.port, args.handshake_rtts).start()
    print(proxy.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
