"""Twisted's TLS layer with less Python per byte, for bulk transfers (blobs, pieces) over TLS.

``twisted.protocols.tls.TLSMemoryBIOProtocol`` handles every 16 KB TLS record in Python: on the way out, a
slice, an ``SSL_write`` and a ``bio_read`` and a transport write per record; on the way in, a ``recv`` and a
call of the wrapped protocol (twisted.web's parser, a body consumer) per record. ``BulkTLS`` keeps Twisted's
states and semantics and changes only how many times that Python runs:

- ``_write`` hands OpenSSL the whole application write at once when the connection's context does not allow
  partial writes (``whole_writes``, which our server contexts do: one ``SSL_write`` for a 1 MiB chunk), else
  16 KB views of it (no copies); the encrypted bytes are then read out of the memory BIO and written to the
  transport once.
- ``_flushReceiveBIO`` decrypts the records the last transport read completed and gives them to the wrapped
  protocol joined, up to 64 KB a call (as a TCP read gives several segments at once).
- once a transport read comes back full (a bulk transfer), the transport reads up to ``READ_SIZE`` bytes at a
  time (Twisted's TCP default is 64 KB; it is also how much the transport buffers before it pauses a producer).
  Connections of small messages (announces) keep 64 KB reads: a 256 KB buffer for each of their reads is
  wasted work (bench/RESULTS.md, "Fewer Python calls per TLS record").

It overrides three of Twisted's private methods and reads its private flags (``_tlsConnection``,
``_lostTLSConnection``, ``_aborted``, ``_shutdownTLS``, ``_tlsShutdownFinished``, ``_bufferedWrite``), as
Twisted 22-26 define them; tests/net/test_tlsfast.py checks the bytes' order, close_notify, a close while
the peer does not read, producers paused and resumed, and a corrupt record through it (tests/net/test_tls.py
the refused handshakes).
"""

from __future__ import annotations

import weakref
from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

# The largest TLS record's plaintext: partial writes go out in views of this size.
RECORD = 1 << 14
# What a record adds to its plaintext, at most (header, explicit IV, tag or MAC and padding): the size of the
# BIO read after a write is the write's size plus this per record (the read loops if that was short).
RECORD_OVERHEAD = 512
# The transport's read size on a TLS connection (Twisted's TCP default is 64 KB).
READ_SIZE = 1 << 18
# The largest read of the send BIO: a whole 1 MiB write read out at once costs two 1 MiB allocations (pyOpenSSL's
# buffer and the bytes), and big allocations churn glibc's heap (trimmed, then faulted in again); 64 KB pieces
# do not, and Twisted's TCP transport joins them once.
FLUSH_MAX = 1 << 16
# Records joined into one ``dataReceived`` at most (64 KB, the size of Twisted's own TCP reads), for the same reason.
JOIN_RECORDS = 4
# What OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE is (pyOpenSSL sets it on every context; it has no constant).
MODE_ENABLE_PARTIAL_WRITE = 0x1

# Contexts whose connections accept a whole write in one SSL_write (see ``whole_writes``).
_WHOLE: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def whole_writes(context: SSL.Context) -> SSL.Context:
    """Clears partial writes on ``context`` (not yet used for a connection), so ``BulkTLS`` may write a whole
    chunk in one call: with a memory BIO, OpenSSL then encrypts every record of it before returning (or asks
    for the same buffer again after ``WantReadError``, which Twisted's write buffer does)."""
    context.clear_mode(MODE_ENABLE_PARTIAL_WRITE)
    _WHOLE.add(context)
    return context


class BulkTLS(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` with fewer Python calls per byte (see the module's docstring)."""

    _whole = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
        tls = getattr(self, "_tlsConnection", None)
        self._whole = tls is not None and tls.get_context() in _WHOLE

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        size = getattr(transport, "bufferSize", READ_SIZE)
        if len(data) >= size and size < READ_SIZE:  # a full read: a bulk transfer, read bigger from now on
            transport.bufferSize = READ_SIZE
        super().dataReceived(data)  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        size = len(data)
        step = size if self._whole else RECORD
        view = memoryview(data)
        sent = 0
        while sent < size:
            try:
                sent += connection.send(view[sent : sent + step] if step < size else data)
            except WantReadError:
                self._flushSendBIO()
                # Retried with the same bytes, as OpenSSL asks.
                self._bufferedWrite(data[sent:])  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
                return
            except Error:
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
                return
        self._flushSendBIO(min(FLUSH_MAX, size + (size // RECORD + 1) * RECORD_OVERHEAD))

    def _flushSendBIO(self, size: int = 1 << 15) -> None:
        """Writes everything in the send BIO to the transport, in reads of ``size`` bytes."""
        transport: Any = self.transport
        while self._tlsConnection is not None:
            try:
                data = self._tlsConnection.bio_read(size)
            except WantReadError:
                return
            transport.write(data)
            if len(data) < size:
                return

    def _flushReceiveBIO(self) -> None:
        parts: list[bytes] = []
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            try:
                data = connection.recv(1 << 15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(parts)  # what came before close_notify, then the shutdown, as Twisted does
                parts = []
                self._shutdownTLS()  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
                self._tlsShutdownFinished(None)  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
            except Error:
                self._deliver(parts)
                parts = []
                self._tlsShutdownFinished(Failure())  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
            else:
                parts.append(data)
                if len(parts) == JOIN_RECORDS:
                    self._deliver(parts)
                    parts = []
        self._deliver(parts)
        self._flushSendBIO()

    def _deliver(self, parts: list[bytes]) -> None:
        if parts and not self._aborted:
            ProtocolWrapper.dataReceived(self, parts[0] if len(parts) == 1 else b"".join(parts))
