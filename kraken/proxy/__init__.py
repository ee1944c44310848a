"""The proxy: the read-write registry builders push to."""
