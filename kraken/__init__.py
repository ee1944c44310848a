"""Kraken for Python: a peer-to-peer Docker registry for large clusters, on Twisted."""
