"""Ring repair with real origins: three ``twistd kraken-origin`` processes, replicas 2.

Blobs are uploaded to both members of their placement: the first copies each to the second, which then answers
409 (the second upload only makes sure: a health check that failed while the cluster started may skip a copy).
One member is then SIGKILLed and, once the others have marked it unhealthy, replaced by an empty member at the
same address (a new disk: a fresh store root). Nobody asks for a blob: the survivors' repair (``repair.grace:
0s``, so the return of the member is enough) must copy to the newcomer every blob it should hold, and each
blob must then be, on disk, on both members of its placement. Every wait is for a log line of a daemon,
through the reactor, bounded.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest_twisted
import yaml
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred

from kraken.cluster.ring import Ring
from kraken.core import Digest

REPLICAS = 2
BOUND = 90.0  # seconds: the backstop of every wait for a log line
NS = "repair-test"


class Origin(protocol.ProcessProtocol):
    """One ``twistd -n kraken-origin`` child: its output kept (and written to ``log``), waited on line by line."""

    def __init__(self, name: str, log: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._partial = b""
        self._log = open(log, "ab")  # closed when the process ends
        self._waiters: list[tuple[Callable[[str], bool], int, Deferred[str]]] = []
        self.ended: Deferred[None] = Deferred()
        self.transport: Any = None

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self.lines.append(raw.decode("utf-8", errors="replace"))
        for waiter in list(self._waiters):
            self._offer(waiter)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self._log.close()
        for _, _, d in list(self._waiters):
            d.errback(RuntimeError(f"{self.name} ended:\n" + "\n".join(self.lines[-40:])))
        self._waiters.clear()
        self.ended.callback(None)

    def _offer(self, waiter: tuple[Callable[[str], bool], int, Deferred[str]]) -> None:
        done, start, d = waiter
        for line in self.lines[start:]:
            if done(line):
                self._waiters.remove(waiter)
                d.callback(line)
                return

    def when(self, reactor: Any, text: str, start: int = 0) -> Deferred[str]:
        """The first output line from index ``start`` on that contains ``text`` (a TimeoutError after ``BOUND``)."""
        d: Deferred[str] = Deferred()
        waiter = (lambda line: text in line, start, d)
        self._waiters.append(waiter)
        self._offer(waiter)
        d.addTimeout(BOUND, reactor)
        return d

    async def stop(self, signal: str = "TERM") -> None:
        if self.ended.called:
            return
        try:
            self.transport.signalProcess(signal)
        except error.ProcessExitedAlready:
            pass
        await self.ended


class Cluster:
    def __init__(self, reactor: Any, twistd: Any, base: str) -> None:
        self.reactor = reactor
        self.twistd = twistd
        self.base = base
        ports = free_ports(6)
        self.http, self.p2p = ports[:3], ports[3:]
        self.members = [f"127.0.0.1:{p}" for p in self.http]
        self.roots = [os.path.join(base, f"origin-{i}") for i in range(3)]
        self.running: list[Origin] = []

    async def start(self, i: int) -> Origin:
        config = {
            "listen_http": f"tcp:{self.http[i]}:interface=127.0.0.1",
            "store": {"root": self.roots[i]},
            "p2p": {"listen": f"tcp:{self.p2p[i]}:interface=127.0.0.1"},
            "cluster": {
                "hosts": self.members,
                "replicas": REPLICAS,
                "refresh_interval": "300ms",
                "health": {"fails": 2, "passes": 1, "timeout": "1s"},
            },
            "repair": {"grace": "0s", "concurrency": 4},
            "http_client": {"retries": 1, "backoff": "100ms", "max_backoff": "100ms"},
        }
        name = f"origin-{i}-{len(self.running)}"
        path = os.path.join(self.base, f"{name}.yaml")
        write_yaml(path, config)
        origin = Origin(name, os.path.join(self.base, f"{name}.log"))
        argv = self.twistd.command("kraken-origin", "--config", path)
        self.reactor.spawnProcess(origin, argv[0], argv, env=self.twistd.env, path=self.twistd.cwd)
        self.running.append(origin)
        await origin.when(self.reactor, "origin P2P listening")
        return origin

    async def stop_all(self) -> None:
        for origin in self.running:
            await origin.stop()


def write_yaml(path: str, config: dict[str, Any]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config, f)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    found = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return found


def on_disk(root: str, digest: Digest) -> bool:
    return os.path.exists(os.path.join(root, "cache", digest.hex[:2], digest.hex[2:4], digest.hex, "data"))


async def upload(http: Any, member: str, data: bytes) -> Digest:
    """A client's upload to ``member``, which copies it to the other replica before its 201 (unless it holds
    that replica unhealthy then, as it may while the cluster starts). ``member`` may hold it already: a 409."""
    digest = Digest.from_bytes(data)
    base = f"http://{member}/namespace/{NS}/blobs/{digest}/uploads"
    started = await http.post(base)
    if started.code == 409:
        await started.content()
        return digest
    assert started.code == 200, await started.text()
    url = f"{base}/{started.headers.getRawHeaders('location')[0]}"
    await started.content()
    patched = await http.patch(url, data=data, headers={"Content-Range": f"0-{len(data)}"})
    assert patched.code == 204, await patched.text()
    await patched.content()
    committed = await http.put(url)
    assert committed.code == 201, await committed.text()
    await committed.content()
    return digest


@pytest_twisted.ensureDeferred
async def test_an_empty_replacement_is_filled_by_the_survivors(
    reactor: Any, twistd: Any, http: Any, tmp_path: Any
) -> None:
    cluster = Cluster(reactor, twistd, str(tmp_path))
    try:
        origins = [await cluster.start(i) for i in range(3)]
        ring = Ring(cluster.members, REPLICAS)
        digests = []
        for n in range(30):
            data = f"{uuid.uuid4()} blob {n} ".encode() * 2000
            # To both members of its placement: the second upload is a 409 unless the first origin's copy was skipped.
            for member in ring.placement(Digest.from_bytes(data)):
                digest = await upload(http, member, data)
            digests.append(digest)
        for digest in digests:
            assert all(on_disk(cluster.roots[cluster.members.index(m)], digest) for m in ring.placement(digest))

        # The member that should hold the most blobs goes, and its disk with it.
        lost = max(range(3), key=lambda i: sum(cluster.members[i] in ring.placement(d) for d in digests))
        survivors = [origins[i] for i in range(3) if i != lost]
        # From now on: each survivor marked every member unhealthy once already, while the others started.
        marks = [
            o.when(reactor, f"cluster member {cluster.members[lost]} is unhealthy", len(o.lines)) for o in survivors
        ]
        await origins[lost].stop("KILL")
        for mark in marks:
            await mark
        os.rename(cluster.roots[lost], cluster.roots[lost] + ".lost")
        from_now = [len(o.lines) for o in survivors]
        await cluster.start(lost)  # the replacement: same address, empty store

        # Each survivor sees it back and walks its store; no client asks for anything.
        sent = 0
        for origin, start in zip(survivors, from_now, strict=True):
            back = await origin.when(reactor, f"repair: walking the store ({cluster.members[lost]} is back", start)
            done = await origin.when(reactor, "repair: walk done", origin.lines.index(back, start))
            found = re.search(r"(\d+) copies sent .* (\d+) failed", done)
            assert found is not None and found.group(2) == "0", done
            sent += int(found.group(1))
        for digest in digests:
            for member in ring.placement(digest):
                assert on_disk(cluster.roots[cluster.members.index(member)], digest), (str(digest), member)
        moved = sum(cluster.members[lost] in ring.placement(d) for d in digests)
        assert sent == moved > 0, "each lost copy sent once, by one survivor"
    finally:
        await cluster.stop_all()
