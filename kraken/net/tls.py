"""TLS and mutual TLS for every link: the ``tls:`` config block, its checks, and the contexts built from it.

One block per daemon (``TLSConfig``, YAML key ``tls``), all paths, all optional:

- ``cert`` + ``key``: this daemon's certificate (PEM, may carry its chain) and private key. With them, every
  HTTP listener of the daemon speaks TLS (its endpoint stays ``tcp:...``: the daemon wraps it), and its
  clients present the certificate when a server asks for one.
- ``ca``: the CA (PEM, one or more certificates) that this daemon's clients trust for ``https://`` URLs and
  P2P peers. Absent: the system's trust roots.
- ``client_ca``: the listeners ask for a client certificate signed by it (mutual TLS);
  ``require_client_cert: true`` refuses a connection without one in the TLS handshake, before any handler runs.

Host names (or IP addresses) are always checked (service_identity), and certificates always verified. The
checks at start (``TLSConfig`` validation) name the file and key; at run time a refused handshake is logged
with the peer's address. ``TLSContexts.reload`` (on SIGHUP, ``ReloadOnSIGHUP``) reads the files again: new
connections use the new pair, open ones keep theirs.
"""

from __future__ import annotations

import datetime
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import directlyProvides, implementer, providedBy

from kraken.net.tlsfast import BulkTLS, whole_writes

log = Logger(namespace="kraken.net.tls")

# Client options are cached per host name; a P2P node dials many addresses, so the cache is bounded.
MAX_CLIENT_CACHE = 1024


class TLSFileError(ValueError):
    """A TLS file that cannot be used; the message names the key and the file."""


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSFileError(f"{key} {path}: file not found") from None
    except OSError as e:
        raise TLSFileError(f"{key} {path}: cannot read: {e.strerror}") from None


def _certs(key: str, path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (at least one)."""
    data = _read(key, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSFileError(f"{key} {path}: no PEM certificate in this file")
    return certs


def _check_dates(key: str, path: str, cert: x509.Certificate, now: datetime.datetime) -> None:
    if cert.not_valid_after_utc <= now:
        raise TLSFileError(f"{key} {path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_valid_before_utc > now:
        raise TLSFileError(f"{key} {path}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d} UTC")


@attrs.frozen
class Material:
    """The parsed files of a ``TLSConfig`` (what ``check`` read and verified)."""

    chain: list[x509.Certificate] | None  # this daemon's certificate first
    key_pem: bytes | None
    ca: list[x509.Certificate] | None
    client_ca: list[x509.Certificate] | None


def _key(config: TLSConfig, leaf: x509.Certificate) -> bytes:
    assert config.key is not None
    data = _read("key", config.key)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise TLSFileError(f"key {config.key}: not an unencrypted PEM private key ({e})") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise TLSFileError(f"key {config.key}: does not match the certificate in cert {config.cert}")
    return data


def _verify_chain(config: TLSConfig, chain: list[x509.Certificate], ca: list[x509.Certificate]) -> None:
    store = crypto.X509Store()
    for c in ca:
        store.add_cert(crypto.X509.from_cryptography(c))
    untrusted = [crypto.X509.from_cryptography(c) for c in chain[1:]]
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(chain[0]), untrusted)
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as e:
        raise TLSFileError(f"cert {config.cert}: not signed by ca {config.ca} ({e})") from None


def check(config: TLSConfig, now: datetime.datetime | None = None) -> Material:
    """Read and check every file of ``config``; ``TLSFileError`` names the first problem."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    chain = key_pem = ca = client_ca = None
    if config.ca is not None:
        ca = _certs("ca", config.ca)
        for c in ca:
            _check_dates("ca", config.ca, c, now)
    if config.client_ca is not None:
        client_ca = _certs("client_ca", config.client_ca)
        for c in client_ca:
            _check_dates("client_ca", config.client_ca, c, now)
    if config.cert is not None:
        chain = _certs("cert", config.cert)
        _check_dates("cert", config.cert, chain[0], now)
        try:
            chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            raise TLSFileError(
                f"cert {config.cert}: no subjectAltName (clients check host names against it, not the CN)"
            ) from None
        key_pem = _key(config, chain[0])
        if ca is not None:
            _verify_chain(config, chain, ca)
    return Material(chain, key_pem, ca, client_ca)


def _check_config(config: TLSConfig, attribute: Any = None, value: Any = None) -> None:
    if (config.cert is None) != (config.key is None):
        raise ValueError("cert and key go together: set both or neither")
    if config.client_ca is not None and config.cert is None:
        raise ValueError("client_ca needs cert and key: only a TLS listener can ask for client certificates")
    if config.require_client_cert and config.client_ca is None:
        raise ValueError("require_client_cert needs client_ca, the CA that signs the client certificates")
    check(config)


@attrs.frozen
class TLSConfig:
    """A daemon's TLS (YAML key ``tls``); every field absent: plain TCP, as without the block."""

    # The CA (PEM) this daemon's clients trust for https:// URLs and P2P peers (absent: the system's roots).
    ca: str | None = None
    # This daemon's certificate (PEM, its chain may follow) and key: with them, its listeners speak TLS.
    cert: str | None = None
    key: str | None = None
    # Listeners ask for a client certificate signed by this CA (mutual TLS).
    client_ca: str | None = None
    # Refuse a connection without a client certificate (in the TLS handshake, before any handler runs).
    require_client_cert: bool = False

    def __attrs_post_init__(self) -> None:
        _check_config(self)

    @property
    def configured(self) -> bool:
        return self.ca is not None or self.cert is not None


def check_p2p_tls(tls: TLSConfig, p2p_tls: bool) -> None:
    """A component's cross-check: ``p2p.tls`` needs the daemon's cert, key and ca (both sides present and
    verify cluster certificates)."""
    if p2p_tls and (tls.cert is None or tls.ca is None):
        raise ValueError("p2p.tls needs tls.cert, tls.key and tls.ca (both sides present cluster certificates)")


def _server_options(material: Material, trust: list[x509.Certificate] | None, require: bool) -> Any:
    assert material.chain is not None and material.key_pem is not None
    extra: dict[str, Any] = {}
    if trust is not None:
        extra = {"verify": True, "caCerts": [crypto.X509.from_cryptography(c) for c in trust]}
        extra["requireCertificate"] = require
    options = ssl.CertificateOptions(
        privateKey=crypto.load_privatekey(crypto.FILETYPE_PEM, material.key_pem),
        certificate=crypto.X509.from_cryptography(material.chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in material.chain[1:]],
        **extra,
    )
    whole_writes(options.getContext())  # the one context every server connection is made from
    return options


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    """Makes each new server connection from the options current at that moment (so a reload takes effect
    for new connections only)."""

    def __init__(self, options: Callable[[], Any]) -> None:
        self._options = options

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._options().getContext(), None)


class _WholeWritesTrust:
    """``trust``, which also lets the client context it is added to take whole writes (``whole_writes``):
    Twisted's ``CertificateOptions`` calls the trust root's ``_addCACertsToContext`` (a method of Twisted's
    interface, private by name) on a new context, before its first connection: the one hook into a client
    context that ``optionsForClientTLS`` gives."""

    def __init__(self, trust: Any) -> None:
        self._trust = trust
        directlyProvides(self, providedBy(trust))  # IOpenSSLTrustRoot, which Twisted does not export

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        self._trust._addCACertsToContext(context)
        whole_writes(context)


@implementer(IPolicyForHTTPS)
class _Policy:
    def __init__(self, contexts: TLSContexts) -> None:
        self._contexts = contexts

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return self._contexts.client_creator(hostname.decode("ascii"))


class TLSContexts:
    """What a daemon's ``TLSConfig`` turns into at run time: server connection creators for its listeners,
    client creators for its clients and dials, reloaded from the files by ``reload``."""

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self._load(check(config))

    @classmethod
    def from_config(cls, config: TLSConfig) -> TLSContexts | None:
        """None when the block is empty (plain, as before)."""
        return cls(config) if config.configured else None

    def _load(self, material: Material) -> None:
        self._material = material
        serves = material.chain is not None
        self._http = _server_options(material, material.client_ca, self.config.require_client_cert) if serves else None
        self._public = _server_options(material, None, False) if serves else None
        peers = material.client_ca or material.ca
        self._p2p = _server_options(material, peers, True) if serves and peers is not None else None
        self._trust: Any = _WholeWritesTrust(
            ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(c)) for c in material.ca])
            if material.ca is not None
            else ssl.platformTrust()
        )
        self._client_cert = None
        if serves:
            assert material.chain is not None and material.key_pem is not None
            self._client_cert = ssl.PrivateCertificate.loadPEM(
                material.chain[0].public_bytes(serialization.Encoding.PEM) + material.key_pem
            )
        self._clients: dict[str, IOpenSSLClientConnectionCreator] = {}

    def reload(self) -> bool:
        """Read the files again; on any problem log it and keep what was loaded."""
        try:
            material = check(self.config)
            self._load(material)
        except (TLSFileError, SSL.Error, ValueError) as e:
            log.error("TLS reload failed, keeping the previous certificate and key: {error}", error=str(e))
            return False
        log.info("TLS certificate and key reloaded from {cert}", cert=self.config.cert or self.config.ca)
        return True

    @property
    def serves(self) -> bool:
        return self._http is not None

    def http_server(self) -> IOpenSSLServerConnectionCreator | None:
        """The listeners' TLS (None: this daemon has no certificate, its listeners stay plain)."""
        return _ServerCreator(lambda: self._http) if self.serves else None

    def public_server(self) -> IOpenSSLServerConnectionCreator | None:
        """TLS that asks for no client certificate, whatever ``client_ca`` says: the agent's registry, which
        serves this host's container runtime (loopback, no client auth)."""
        return _ServerCreator(lambda: self._public) if self.serves else None

    def p2p_server(self) -> IOpenSSLServerConnectionCreator:
        """The P2P listener's TLS: always mutual, peers verified against ``client_ca`` (or ``ca``)."""
        if self._p2p is None:
            raise ValueError("P2P TLS needs tls.cert, tls.key and tls.ca")
        return _ServerCreator(lambda: self._p2p)

    def client_creator(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Client TLS to ``hostname`` (a name or an IP address, checked against the server's SAN), trusting
        ``ca`` and presenting this daemon's certificate."""
        creator = self._clients.get(hostname)
        if creator is None:
            if len(self._clients) >= MAX_CLIENT_CACHE:
                self._clients.clear()
            creator = ssl.optionsForClientTLS(hostname, trustRoot=self._trust, clientCertificate=self._client_cert)
            self._clients[hostname] = creator
        return creator

    def policy(self) -> IPolicyForHTTPS:
        """For ``make_http_client``: https:// URLs verified against ``ca``, with this daemon's certificate."""
        return _Policy(self)


class _KrakenTLS(BulkTLS):
    """Twisted's TLS layer (``BulkTLS``: fewer Python calls per record), closing as TCP does, and logging
    (once) a server connection whose TLS handshake failed (no client certificate, another CA, ...)."""

    def loseConnection(self) -> None:
        """Send close_notify and close the TCP connection once it is written, like a plain TCP transport:
        without waiting for the peer's close_notify (a peer whose reading is paused may never send it) nor for
        a registered producer to go away (a P2P connection keeps one for its lifetime). Uses Twisted's private
        flags of the TLS layer."""
        if self.disconnecting or not self.connected:
            return
        buffered = bool(getattr(self, "_appSendBuffer", None))
        if getattr(self, "_producer", None) is not None and not buffered:
            self.unregisterProducer()  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated
        super().loseConnection()  # type: ignore[no-untyped-call]  # as above
        if self.connected and getattr(self, "_handshakeDone", False) and not buffered and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]  # Twisted is unannotated
        cause = getattr(self, "_reason", None) or reason
        # Twisted's own flags (private): the handshake never finished, and why the TLS layer ended.
        if (
            isinstance(self.factory, TLSServerFactory)
            and not getattr(self, "_handshakeDone", True)
            and cause.check(SSL.Error)
        ):
            peer = self.transport.getPeer() if self.transport is not None else None
            address = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
            log.warn(
                "TLS handshake with {peer} refused on {listener}: {error}",
                peer=address,
                listener=getattr(self.factory, "name", "?"),
                error=describe(cast(BaseException, cause.value)),
            )
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # Twisted's tls is unannotated


def describe(error: BaseException) -> str:
    """An OpenSSL error as one readable line (``certificate verify failed``, ``peer did not return a
    certificate``...)."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list):
        reasons = [r[-1] for r in args[0] if isinstance(r, tuple) and r and r[-1]]
        if reasons:
            return "; ".join(reasons)
    return str(error) or type(error).__name__


class TLSServerFactory(TLSMemoryBIOFactory):
    """Wraps a listener's factory in TLS, logging refused handshakes with the peer's address."""

    protocol = _KrakenTLS

    def __init__(self, creator: IOpenSSLServerConnectionCreator, wrapped: Any, name: str) -> None:
        super().__init__(creator, False, wrapped)
        self.name = name


class _TLSClientFactory(TLSMemoryBIOFactory):
    protocol = _KrakenTLS


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """``wrapClientTLS`` with the TLS layer above (closing as TCP does): the P2P dialer's."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator, inner: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._inner = inner

    def connect(self, factory: Any) -> Deferred[Any]:
        wrapper = _TLSClientFactory(self._creator, True, factory)
        connected: Deferred[Any] = self._inner.connect(wrapper)
        return connected.addCallback(lambda protocol: protocol.wrappedProtocol)


@implementer(IAgentEndpointFactory)
class AgentEndpoints:
    """For ``Agent.usingEndpointFactory``: what Twisted's ``Agent`` connects to (``HostnameEndpoint``, with
    ``policy``'s TLS for ``https://``), with the TLS layer above for ``https://``."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        endpoint = HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return TLSClientEndpoint(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


class Reloadable(Protocol):
    def reload(self) -> bool:
        """Read its files again; False (and a log line naming the file) when that failed and the old stay."""


class ReloadOnSIGHUP(Service):
    """Reloads ``contexts``, then each of ``also`` (e.g. the proxy's htpasswd file or token keys), when the
    process gets SIGHUP (the reload runs in the reactor thread); the previous handler, if any, still runs
    (the herd has several daemons in one process). With nothing to reload (no ``tls`` block) a SIGHUP is
    only logged: ``systemctl reload`` never stops a daemon. ``after`` gets whether everything reloaded."""

    def __init__(
        self,
        contexts: TLSContexts | None,
        reactor: Any,
        after: Callable[[bool], object] | None = None,
        also: Sequence[Reloadable] = (),
    ) -> None:
        self.setName("tls-reload")  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._contexts = contexts
        self._reactor = reactor
        self._after = after
        self._also = tuple(also)
        self._previous: Any = None

    def _reload(self) -> None:
        done = True
        if self._contexts is not None:
            done = self._contexts.reload()
        elif not self._also:
            log.info("SIGHUP: nothing to reload (no tls block)")
        for other in self._also:
            done = other.reload() and done
        if self._after is not None:
            self._after(done)

    def _handler(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reload)
        if callable(self._previous):
            self._previous(signum, frame)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self._previous = signal.signal(signal.SIGHUP, self._handler)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)


def wire(config: TLSConfig, reactor: Any, parent: Any) -> TLSContexts | None:
    """A tap's one call: the daemon's contexts (None without a ``tls`` block), reloaded on SIGHUP by a
    service added to ``parent``."""
    contexts = TLSContexts.from_config(config)
    ReloadOnSIGHUP(contexts, reactor).setServiceParent(parent)  # type: ignore[no-untyped-call]
    return contexts


def server_side(contexts: TLSContexts | None) -> IOpenSSLServerConnectionCreator | None:
    """The listeners' TLS, or None (plain)."""
    return None if contexts is None else contexts.http_server()
