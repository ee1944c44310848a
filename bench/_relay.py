"""A TCP relay whose server-to-client direction, all connections together, is capped at one rate.

    python bench/_relay.py --listen PORT --to HOST:PORT --rate BYTES_PER_SEC

The loopback mode of bench/netbench.py puts it in front of docker-registry, so that the central registry's
upload is capped as an origin's is (docker-registry has no limit of its own). Prints ``relay listening`` once
it accepts connections. A token bucket of 50 ms of traffic is shared by every connection: an upstream
connection that overdraws it stops reading until the debt is paid back, and also while its client is slow to
take what was already sent (TCP back-pressure).
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class Bucket:
    def __init__(self, rate: float, clock: object = time.monotonic) -> None:
        self.rate = rate
        self.capacity = rate * 0.05
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()  # type: ignore[operator]

    def spend(self, n: int) -> float:
        """Take ``n`` bytes' worth; returns the seconds to wait before sending more (0 if none)."""
        now = self._clock()  # type: ignore[operator]
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate) - n
        self._last = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@implementer(IPushProducer)
class Gate:
    """Pauses an upstream transport while the bucket is in debt or the client is full; resumes when neither."""

    def __init__(self, transport: object) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def hold(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.reasons.add(reason)

    def release(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        self.hold("client")

    def resumeProducing(self) -> None:
        self.release("client")

    def stopProducing(self) -> None:
        self.transport.loseConnection()  # type: ignore[attr-defined]


class Upstream(protocol.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.gate = Gate(self.transport)
        self.client.upstream = self
        self.client.transport.registerProducer(self.gate, True)
        self.client.transport.resumeProducing()
        if self.client.pending:
            self.transport.write(b"".join(self.client.pending))
            self.client.pending.clear()

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)
        wait = self.client.factory.bucket.spend(len(data))
        if wait:
            self.gate.hold("bucket")
            reactor.callLater(wait, self.gate.release, "bucket")

    def connectionLost(self, reason: object = None) -> None:
        self.client.transport.loseConnection()


class Client(protocol.Protocol):
    upstream: Upstream | None = None

    def connectionMade(self) -> None:
        self.pending: list[bytes] = []
        self.transport.pauseProducing()  # until the upstream connection is there
        host, port = self.factory.to
        protocol.ClientCreator(reactor, Upstream, self).connectTCP(host, port).addErrback(
            lambda _: self.transport.loseConnection()
        )

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class RelayFactory(protocol.Factory):
    protocol = Client

    def __init__(self, to: tuple[str, int], rate: float) -> None:
        self.to = to
        self.bucket = Bucket(rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", required=True, help="HOST:PORT")
    parser.add_argument("--rate", type=float, required=True, help="bytes per second, all connections together")
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    reactor.listenTCP(args.listen, RelayFactory((host, int(port)), args.rate), interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print("relay listening", flush=True))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
