"""Peer-to-peer distribution: the wire format (``wire``) and the sans-IO peer session (``session``).

Both are pure: importing them does not import the reactor.
"""
