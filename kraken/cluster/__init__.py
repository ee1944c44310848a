"""The origin cluster: a rendezvous hash ring, host lists, active health checks and failover.

Pure building blocks, composed by each daemon's ``tap.py``:

- ``kraken.cluster.ring``: which members hold a blob (``Ring``); pure, no reactor.
- ``kraken.cluster.hosts``: who the members are (``HostList``: a static list, or
  a DNS name resolved periodically).
- ``kraken.cluster.health``: which members answer (``HealthFilter``).
- ``kraken.cluster.config``: the ``cluster:`` section of a config (``ClusterConfig``).
- ``kraken.cluster.failover``: moving a call from a member that fails to the next
  (``first_answer``, ``Failover``: rounds with backoff, forgetting what failed).
- ``kraken.cluster.services``: several trackers or build-indexes as a client sees
  them (``ServiceHostsConfig``: one URL, a list or a DNS name; ``ServiceHosts``:
  rendezvous order per key, passive health, failover; ``MemberClients``).

Nothing is re-exported here, so importing ``kraken.cluster.ring`` imports no
Twisted at all.
"""
