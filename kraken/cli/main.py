"""The ``kraken`` command (console script; also ``python -m kraken.cli``): one command, subcommands.

- ``kraken status``: every daemon of a cluster, alive, ready, its ring and queues (``kraken.cli.status``);
- ``kraken image DIR``: an OCI image layout to push (``kraken.cli.image``, also ``python -m kraken.cli.image``);
- ``kraken certs DIR [NAME...]``: a development CA and certificates (``kraken.cli.certs``);
- ``kraken swarm KEY --tracker URL``: one swarm, live in the terminal (``kraken.cli.swarm``);
- ``kraken preheat REPO:TAG|REPO@DIGEST --proxy URL``: the origins fetch an image now (``kraken.cli.preheat``).

Exit status: 0 success (``status``: every daemon healthy), 1 something unhealthy or failed, 2 a usage or
configuration error (argparse's own code), with a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from kraken.cli import certs, image, preheat, status, swarm
from kraken.cli.calls import run_with_client

PROG = "kraken"
#: certificate names ``kraken certs`` makes when given none: one per kind of daemon.
DEFAULT_NAMES = ("origin", "tracker", "build-index", "proxy", "agent")


def _status_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="ask every daemon of a cluster /health, /readiness and /metrics",
        description="Ask every daemon of a cluster /health, /readiness and /metrics, and show them in a table. "
        "Exit status: 0 every daemon alive and ready, 1 any not, 2 a usage or configuration error.",
    )
    p.add_argument("--config", help="a cluster file: origin, tracker, build_index, proxy, agent (URLs) and tls")
    for kind in status.KINDS:
        flag = "--" + kind.replace("_", "-")
        p.add_argument(flag, dest=kind, action="append", metavar="URL", help=f"a {flag[2:]}'s address (repeatable)")
    p.add_argument("--ca", help="CA certificate (PEM) trusted for https:// daemons (default: the system's)")
    p.add_argument("--cert", help="client certificate (PEM), for daemons asking for one (mutual TLS)")
    p.add_argument("--key", help="the client certificate's key (PEM)")
    p.add_argument("--timeout", type=float, default=status.TIMEOUT, help="seconds per request (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _tls_flags(p: Any) -> None:
    p.add_argument("--ca", help="CA certificate (PEM) trusted for an https:// daemon (default: the system's)")
    p.add_argument("--cert", help="client certificate (PEM), for a daemon asking for one (mutual TLS)")
    p.add_argument("--key", dest="tls_key", metavar="KEY", help="the client certificate's key (PEM)")
    p.add_argument("--timeout", type=float, default=status.TIMEOUT, help="seconds per request (default 5)")


def _one_daemon(sub: Any, name: str, summary: str, description: str, daemon: str, example: str) -> Any:
    """A subcommand that asks one daemon: its parser, with ``--<daemon> URL`` (required) and the TLS flags."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument(f"--{daemon}", required=True, metavar="URL", help=f"the {daemon}'s address, like {example}")
    _tls_flags(p)
    return p


def _swarm_parser(sub: Any) -> None:
    p = _one_daemon(
        sub,
        "swarm",
        "one swarm as the tracker sees it, live: every peer's progress, rates and sources",
        "Show a swarm from the tracker's /swarms/KEY.json, redrawn every --interval seconds. "
        "Exit status: 0 shown (or interrupted), 1 the tracker cannot be asked or knows no such swarm, 2 usage.",
        "tracker",
        "http://tracker:15003",
    )
    p.add_argument("key", metavar="DIGEST", help="the blob's digest (sha256:...) or its info hash")
    p.add_argument("--once", action="store_true", help="draw it once and exit")
    p.add_argument("--json", action="store_true", help="print the tracker's JSON document once and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    p.add_argument("--updates", type=int, default=None, help="stop after this many redraws (default: never)")


def _preheat_parser(sub: Any) -> None:
    p = _one_daemon(
        sub,
        "preheat",
        "ask the proxy to have the origins fetch an image now (POST /registry/preheat)",
        "Ask the proxy to preheat an image: the origins fetch every blob of it from their backends. "
        "Exit status: 0 queued, 1 refused or the proxy cannot be asked, 2 a usage error.",
        "proxy",
        "http://proxy:15000",
    )
    p.add_argument("reference", metavar="REPO:TAG|REPO@DIGEST", help="the image")
    p.add_argument("--token-file", help="a file holding the proxy's preheat.token_file secret (first line)")
    p.add_argument("--json", action="store_true", help="print the proxy's answer as JSON")


def _tls_of(args: argparse.Namespace) -> dict[str, str]:
    found = {"ca": args.ca, "cert": args.cert, "key": args.tls_key}
    return {k: v for k, v in found.items() if v}


def run_swarm(args: argparse.Namespace) -> int:
    try:
        swarm.check_key(args.key)
        if args.interval <= 0 or (args.updates is not None and args.updates < 0):
            raise ValueError("--interval must be positive and --updates not negative")
    except ValueError as e:
        print(f"{swarm.PROG}: error: {e}", file=sys.stderr)
        return 2
    return run_with_client(lambda reactor, client: swarm.show(reactor, client, args), _tls_of(args), swarm.PROG)


def run_preheat(args: argparse.Namespace) -> int:
    try:
        args.fields = preheat.parse_reference(args.reference)
        args.token = preheat.read_token(args.token_file) if args.token_file else None
    except ValueError as e:
        print(f"{preheat.PROG}: error: {e}", file=sys.stderr)
        return 2
    return run_with_client(lambda reactor, client: preheat.preheat(reactor, client, args), _tls_of(args), preheat.PROG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate a Kraken cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _status_parser(sub)
    _swarm_parser(sub)
    _preheat_parser(sub)
    sub.add_parser("image", help="write an OCI image layout (see kraken image --help)", add_help=False)
    p = sub.add_parser("certs", help="make (or reuse) a development CA and certificates")
    p.add_argument("dir", help="directory of the CA (created if missing)")
    p.add_argument("names", nargs="*", help=f"certificate names (default: {' '.join(DEFAULT_NAMES)})")
    p.add_argument("--host", action="append", default=[], help="a name or address the certificates carry too")
    return parser


def run_certs(args: argparse.Namespace) -> int:
    try:
        ca = certs.ensure_dev_ca(args.dir, args.names or list(DEFAULT_NAMES), hosts=args.host)
    except (ValueError, OSError) as e:
        print(f"{PROG} certs: error: {e}", file=sys.stderr)
        return 2
    doc = {"ca": ca.ca, "trust_dir": ca.trust_dir, "certificates": ca.pairs, "made": list(ca.made)}
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def status_inputs(args: argparse.Namespace) -> tuple[list[status.Target], dict[str, str]]:
    """The daemons and TLS paths asked for: the cluster file's, then the flags' (flags win for TLS).
    ClusterFileError for a bad file, ValueError when no daemon is named."""
    targets, tls = status.load_cluster(args.config) if args.config else ([], {})
    targets += status.targets_from(vars(args))
    for key in status.TLS_KEYS:
        if getattr(args, key):
            tls[key] = getattr(args, key)
    if not targets:
        raise ValueError("no daemon to ask: give --config FILE or --origin/--tracker/--build-index/--proxy/--agent URL")
    return targets, tls


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["image"]:
        return image.main(argv[1:], prog=f"{PROG} image")
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        return run_certs(args)
    if args.command == "swarm":
        return run_swarm(args)
    if args.command == "preheat":
        return run_preheat(args)
    try:
        targets, tls = status_inputs(args)
    except ValueError as e:
        print(f"{PROG} status: error: {e}", file=sys.stderr)
        return 2
    return status.run(targets, tls, args.timeout, args.json)


if __name__ == "__main__":
    sys.exit(main())
