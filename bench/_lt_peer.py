"""One libtorrent peer of bench/netbench.py's BitTorrent baseline: a seeder or a leecher of one torrent.

Run with Debian's ``/usr/bin/python3`` (``python3-libtorrent``, libtorrent-rasterbar 2.0, does not import in
other Pythons), one process per host, inside the host's namespace like aria2c::

    /usr/bin/python3 bench/_lt_peer.py --torrent T --save DIR --listen IP:6881 --peers N [--seed] [--rate BYTES]
                                       [--loopback] [--host NAME --done FIFO]

The seeder prints ``announced`` once the tracker has answered its first announce. A leecher writes
``<epoch seconds> <host>`` into ``--done`` when it has every piece (verified), the line aria2c's completion
hook writes, then keeps seeding until it is stopped. On SIGTERM or SIGINT a peer prints
``payload uploaded <bytes>`` and exits.

The configuration is what an operator would give a swarm of N hosts on one network: no DHT, local service
discovery, UPnP or NAT-PMP (the torrent's tracker is the only source of peers, with peer exchange on, as
aria2c's); TCP only (uTP's LEDBAT yields to other traffic by design, which a bulk transfer between one's own
hosts does not want; aria2c and ours use TCP); room for a connection to every other peer (``--peers``, and
no limit per torrent); no rate limits unless ``--rate`` (loopback mode, where the programs cap themselves:
there every peer, loopback ones included, is in the global rate class, and several peers may share the one
address); the seeder in super-seeding mode (BEP 16, ``--super-seed``: it offers each peer one piece at a time,
a piece no other peer has yet, so that its upload goes into pieces the swarm lacks; that is what the mode is
for, one seeder and a swarm that starts empty, and on the testbed at 64 MiB it took the seeder's egress from
2.1 to 1.2 copies at N = 10 and from 2.9 to 2.0 at N = 50, and the slowest host from 2.22x to 1.80x and from
3.11x to 2.69x of the ideal, one run each). libtorrent's defaults for the rest (8 unchoke slots, its piece
picker and request queue). aria2c has no super-seeding mode.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import libtorrent as lt  # type: ignore[import-not-found]


def settings(args: argparse.Namespace) -> dict[str, object]:
    return {
        "listen_interfaces": args.listen,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "connections_limit": max(200, args.peers + 10),
        "upload_rate_limit": args.rate,
        "download_rate_limit": args.rate,
        "allow_multiple_connections_per_ip": args.loopback,
        "alert_mask": lt.alert_category.status | lt.alert_category.error | lt.alert_category.tracker,
    }


def session(args: argparse.Namespace) -> lt.session:
    ses = lt.session(settings(args))
    if args.loopback and args.rate:
        # Peers on loopback and private networks are in libtorrent's unlimited "local" class by default.
        every = lt.ip_filter()
        every.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(every)
    return ses


def add(ses: lt.session, args: argparse.Namespace) -> lt.torrent_handle:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    # One torrent: started now, never queued or paused by the session.
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    if args.seed:
        params.flags |= lt.torrent_flags.seed_mode  # the data is there: no hash check at start (aria2c's too)
        if args.super_seed:
            params.flags |= lt.torrent_flags.super_seeding
    return ses.add_torrent(params)


def report_done(args: argparse.Namespace) -> None:
    with open(args.done, "w") as f:
        f.write(f"{time.time():.6f} {args.host}\n")


def run(args: argparse.Namespace) -> int:
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    ses = session(args)
    handle = add(ses, args)
    announced = finished = False
    while not stop:
        ses.wait_for_alert(500)
        for a in ses.pop_alerts():
            if isinstance(a, lt.tracker_reply_alert) and args.seed and not announced:
                announced = True
                print(f"announced: {a.num_peers} peers", flush=True)
            elif isinstance(a, lt.torrent_finished_alert) and not args.seed and not finished:
                finished = True
                report_done(args)
                print("finished", flush=True)
            elif a.category() & lt.alert_category.error:
                print(f"error: {a.message()}", flush=True)
    print(f"payload uploaded {handle.status().total_payload_upload}", flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torrent", required=True)
    p.add_argument("--save", required=True, help="the directory that holds (seeder) or gets (leecher) the data")
    # The host's own address only: libtorrent announces once per address it listens on (127.0.0.1 too).
    p.add_argument("--listen", required=True, help="IP:PORT")
    p.add_argument("--peers", type=int, required=True, help="leechers in the swarm")
    p.add_argument("--seed", action="store_true")
    p.add_argument("--super-seed", action="store_true", help="a seeder that offers each piece to one peer at a time")
    p.add_argument("--rate", type=int, default=0, help="own cap each way, bytes/s (0: none)")
    p.add_argument("--loopback", action="store_true", help="all peers share 127.0.0.1")
    p.add_argument("--host", default="", help="a leecher's name in its completion line")
    p.add_argument("--done", default="", help="a leecher's FIFO for its completion line")
    return p


if __name__ == "__main__":
    parsed = parser().parse_args()
    if not parsed.seed and not (parsed.host and parsed.done):
        parser().error("a leecher needs --host and --done")
    sys.exit(run(parsed))
