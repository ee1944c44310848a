"""A whole cluster as separate processes on loopback, as an operator would run it: origins in a ring with
replicas, a tracker, a build-index, a proxy and agents, each its own ``twistd``. The adversarial tests
(tests/adversarial/) and their benchmark (bench/adversarial.py) both drive it.

Every daemon's output goes to ``<work>/<name>.log`` and is kept in memory line by line, so a caller can wait
for a log line (``Daemon.wait_for``) instead of sleeping. A daemon can be killed and started again on the
same ports and state directory (``Fleet.kill``, ``Fleet.restart``).
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml
from _daemons import ROOT, end, free_port, memory, twistd

READY_TIMEOUT = 60.0
CLIENT_TIMEOUT = 300.0  # seconds; a backstop, each daemon is awaited by its ready line
BUSY_EXIT = re.compile(r"Unhandled|Traceback")


class Daemon:
    """A ``twistd`` child whose output lines are written to ``log`` and kept, with a condition to wait on."""

    def __init__(self, name: str, argv: list[str], log: str, ready: str) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.ready = ready
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._ended = False
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            argv, cwd=os.path.dirname(log), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "a", encoding="utf-8", errors="replace") as out:
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, start: int = 0) -> re.Match[str]:
        """The first line from ``start`` on that matches ``pattern``; raises if none comes within ``timeout``
        seconds or the daemon's output ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    state = "exited" if self._ended else f"no match within {timeout:.0f} s"
                    raise RuntimeError(f"{self.name}: {regex.pattern!r}: {state}; see {self.log}")
                self._cond.wait(left)

    def mark(self) -> int:
        """How many lines so far: a ``start`` for ``wait_for`` and ``since``."""
        with self._cond:
            return len(self.lines)

    def since(self, start: int = 0) -> list[str]:
        with self._cond:
            return self.lines[start:]

    def errors(self) -> list[str]:
        """Lines of unhandled errors and tracebacks: there must never be any."""
        return [line for line in self.since() if BUSY_EXIT.search(line)]

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return memory(self.proc.pid, "VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        end(self.proc, sig)
        self._thread.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Fleet:
    """``origins`` origins (a ring with ``replicas``), a tracker, a build-index, a proxy and ``agents`` agents
    on 127.0.0.1, each a ``twistd`` process with its config in ``work``; started together, then awaited.

    ``tmpfs`` maps state directories (``origin-0``, ``proxy-uploads``, ``agent-1``...) to tmpfs sizes
    (``"64m"``): each is mounted before the daemons start and unmounted by ``stop`` (root only), a real disk
    that fills up.

    ``trackers``: how many trackers (named ``tracker``, or ``tracker-0``, ``tracker-1``... when more than one),
    each given every origin; ``agent_trackers(k, urls)``: the tracker URLs agent ``k`` is given, from the
    fleet's (default: all of them).

    ``overrides`` maps a daemon's name (``origin-0``, ``tracker``, ``tracker-1``, ``build-index``, ``proxy``,
    ``agent-0``, or ``origin`` / ``tracker`` / ``agent`` for all of them) to config keys merged over the defaults.
    ``agent_rate``: every agent's P2P ingress limit in bits per second (None: none), which makes a pull last
    long enough to act during it. ``stream_from_origins``: the agents stream a blob an origin is still fetching
    from that origin (their ``stream_from_origins`` key, given every origin).

    ``secure=True``: TLS on every link with a trustme CA (files in ``<work>/certs``): mutual TLS between the
    daemons, on P2P and on the agent API (``require_client_cert``), TLS without client certificates on the
    registries (proxy, agents' registry), and HTTP Basic auth on the proxy (an htpasswd file with one bcrypt
    user, ``credentials``). The fleet's URLs are then https; ``client_context`` and ``dxf`` are its clients.
    """

    def __init__(
        self,
        work: str,
        *,
        origins: int = 3,
        replicas: int = 2,
        agents: int = 6,
        trackers: int = 1,
        agent_trackers: Callable[[int, list[str]], list[str]] | None = None,
        agent_rate: int | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        tmpfs: dict[str, str] | None = None,
        secure: bool = False,
        stream_from_origins: bool = False,
    ) -> None:
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.secure = secure
        self.scheme = "https" if secure else "http"
        self.mounts: list[str] = []
        self.daemons: dict[str, Daemon] = {}
        for name, size in (tmpfs or {}).items():
            os.makedirs(self.root(name), exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", self.root(name)], check=True)
            self.mounts.append(self.root(name))
        self._overrides = _merge(self._secured(), overrides or {}) if secure else overrides or {}
        self.origin_http = [free_port() for _ in range(origins)]
        self.members = [f"127.0.0.1:{p}" for p in self.origin_http]
        self.origin_urls = [f"{self.scheme}://{m}" for m in self.members]
        self.origin_p2p = [free_port() for _ in range(origins)]
        self.tracker_names = ["tracker"] if trackers == 1 else [f"tracker-{i}" for i in range(trackers)]
        self.tracker_ports = [free_port() for _ in range(trackers)]
        self.tracker_urls = [f"{self.scheme}://127.0.0.1:{p}" for p in self.tracker_ports]
        self.tracker_port = self.tracker_ports[0]
        self.build_index_port, self.proxy_port = free_port(), free_port()
        self.agent_ports = [(free_port(), free_port(), free_port()) for _ in range(agents)]  # registry, p2p, api
        fast = {"retries": 1, "backoff": "100ms", "max_backoff": "100ms"}
        self.configs: dict[str, tuple[str, dict[str, Any], str]] = {}
        for i in range(origins):
            self._config(f"origin-{i}", "kraken-origin", "origin P2P listening", {
                "listen_http": f"tcp:{self.origin_http[i]}:interface=127.0.0.1",
                "advertise": self.members[i],
                "store": {"root": self.root(f"origin-{i}")},
                "p2p": {"listen": f"tcp:{self.origin_p2p[i]}:interface=127.0.0.1",
                        "advertise": f"127.0.0.1:{self.origin_p2p[i]}"},
                "cluster": {"hosts": self.members, "replicas": replicas, "refresh_interval": "1s",
                            "health": {"fails": 2, "passes": 1, "timeout": "1s"}},
                "http_client": fast,
            })  # fmt: skip
        for name, port in zip(self.tracker_names, self.tracker_ports, strict=True):
            self._config(name, "kraken-tracker", "tracker listening", {
                "listen_http": f"tcp:{port}:interface=127.0.0.1", "origin": self.origin_urls, "http_client": fast,
            })  # fmt: skip
        self._config("build-index", "kraken-build-index", "build-index listening", {
            "listen_http": f"tcp:{self.build_index_port}:interface=127.0.0.1", "origin": self.origin_urls,
            "database": os.path.join(work, "tags.db"), "http_client": fast,
        })  # fmt: skip
        self._config("proxy", "kraken-proxy", "proxy listening", {
            "listen_http": f"tcp:{self.proxy_port}:interface=127.0.0.1", "origin": self.origin_urls,
            "build_index": self.build_index_url, "uploads": {"root": self.root("proxy-uploads")},
            "http_client": fast,
        })  # fmt: skip
        bandwidth = {"enabled": False}
        if agent_rate:
            bandwidth = {"enabled": True, "ingress_bits_per_sec": agent_rate, "egress_bits_per_sec": 100 * agent_rate}
        for k, (registry, p2p, api) in enumerate(self.agent_ports):
            known = agent_trackers(k, list(self.tracker_urls)) if agent_trackers else self.tracker_urls
            self._config(f"agent-{k}", "kraken-agent", "agent P2P listening", {
                "listen_registry": f"tcp:{registry}:interface=127.0.0.1",
                "listen_api": f"tcp:{api}:interface=127.0.0.1",
                "tracker": known[0] if len(known) == 1 else list(known), "build_index": self.build_index_url,
                "store": {"root": self.root(f"agent-{k}")},
                "p2p": {"listen": f"tcp:{p2p}:interface=127.0.0.1", "advertise": f"127.0.0.1:{p2p}",
                        "bandwidth": bandwidth},
                "http_client": fast, **({"stream_from_origins": self.origin_urls} if stream_from_origins else {}),
            })  # fmt: skip
        try:
            for name in self.configs:
                self.daemons[name] = self._spawn(name)
            for name in self.configs:
                self.daemons[name].wait_for(self.configs[name][2], READY_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _secured(self) -> dict[str, dict[str, Any]]:
        """Writes a CA, a certificate for 127.0.0.1 and an htpasswd file; the config keys that use them."""
        import bcrypt
        import trustme

        certs = os.path.join(self.work, "certs")
        os.makedirs(certs, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_path = os.path.join(certs, "ca.crt")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.cert_pair = self.issue("node")
        cert, key = self.cert_pair
        self.credentials = ("pusher", os.urandom(12).hex())
        htpasswd = os.path.join(self.work, "htpasswd")
        with open(htpasswd, "w") as f:
            user, password = self.credentials
            f.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        cluster = {"ca": self.ca_path, "cert": cert, "key": key, "client_ca": self.ca_path,
                   "require_client_cert": True}  # fmt: skip
        return {
            "origin": {"tls": cluster, "p2p": {"tls": True}, "cluster": {"scheme": "https"}},
            "tracker": {"tls": cluster},
            "build-index": {"tls": cluster},
            "proxy": {"tls": {"ca": self.ca_path, "cert": cert, "key": key}, "auth": {"htpasswd": htpasswd}},
            "agent": {"tls": cluster, "p2p": {"tls": True}},
        }

    def issue(self, name: str, ca: Any = None, **issue: Any) -> tuple[str, str]:
        """A certificate for 127.0.0.1 signed by ``ca`` (default: the fleet's CA) written under ``<work>/certs``
        (``issue``: ``trustme.CA.issue_cert`` keywords, e.g. ``not_after``); (cert path, key path)."""
        leaf = (ca or self.ca).issue_cert("127.0.0.1", "localhost", **issue)
        cert, key = (os.path.join(self.work, "certs", f"{name}.{ext}") for ext in ("crt", "key"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        return cert, key

    def client_context(self, pair: tuple[str, str] | None = None, *, cert: bool = True) -> ssl.SSLContext:
        """A client TLS context trusting the fleet's CA, presenting ``pair`` (default: the fleet's own
        certificate; ``cert=False``: none)."""
        context = ssl.create_default_context(cafile=self.ca_path)
        if cert:
            context.load_cert_chain(*(pair or self.cert_pair))
        return context

    def dxf(self, registry: str, name: str, *, auth: bool = True) -> Any:
        """A python-dxf client of ``registry`` (``host:port``) for repository ``name``: https trusting the CA and
        the proxy's credentials when the fleet is secure (``auth=False``: none), plain http otherwise."""
        from dxf import DXF

        if not self.secure:
            return DXF(registry, name, insecure=True, timeout=CLIENT_TIMEOUT)

        def login(client: Any, response: Any) -> None:
            client.authenticate(*self.credentials, response=response)

        return DXF(registry, name, auth=login if auth else None, tlsverify=self.ca_path, timeout=CLIENT_TIMEOUT)

    def _config(self, name: str, plugin: str, ready: str, config: dict[str, Any]) -> None:
        kind = name.split("-")[0] if name.startswith(("origin-", "tracker-", "agent-")) else name
        for key in (kind, name):
            config = _merge(config, self._overrides.get(key, {}))
        path = os.path.join(self.work, f"{name}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        self.configs[name] = (plugin, config, ready)

    def _spawn(self, name: str) -> Daemon:
        plugin, _, ready = self.configs[name]
        argv = twistd(plugin, os.path.join(self.work, f"{name}.yaml"))
        return Daemon(name, argv, os.path.join(self.work, f"{name}.log"), ready)

    def root(self, name: str) -> str:
        return os.path.join(self.work, name)

    @property
    def tracker_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.tracker_port}"

    @property
    def build_index_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.build_index_port}"

    @property
    def proxy(self) -> str:
        """``host:port`` of the proxy's registry API."""
        return f"127.0.0.1:{self.proxy_port}"

    def registry(self, k: int) -> str:
        """``host:port`` of agent ``k``'s registry API."""
        return f"127.0.0.1:{self.agent_ports[k][0]}"

    def agent_p2p(self, k: int) -> int:
        return self.agent_ports[k][1]

    def agent_api(self, k: int) -> str:
        return f"{self.scheme}://127.0.0.1:{self.agent_ports[k][2]}"

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, state left as it was."""
        self.daemons[name].stop(signal.SIGKILL)

    def pause(self, name: str) -> None:
        """SIGSTOP: the daemon holds its connections and answers nothing until ``resume``."""
        self.daemons[name].proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.daemons[name].proc.send_signal(signal.SIGCONT)

    def restart(self, name: str) -> Daemon:
        """Start ``name`` again with its config, ports and state directory; returns once it is ready."""
        self.daemons[name].stop()
        daemon = self.daemons[name] = self._spawn(name)
        daemon.wait_for(self.configs[name][2], READY_TIMEOUT)
        return daemon

    def errors(self) -> dict[str, list[str]]:
        """Unhandled errors and tracebacks in any daemon's output (those killed included)."""
        return {name: found for name, d in self.daemons.items() if (found := d.errors())}

    def stop(self) -> None:
        for daemon in reversed(list(self.daemons.values())):
            daemon.stop()
        for mount in self.mounts:
            subprocess.run(["umount", mount], check=False)
        self.mounts = []


def run_all(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run blocking jobs (client pulls) in threads at once; their results in order, or the first error."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
