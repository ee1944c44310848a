"""The agent: the read-only registry on every host, fed by the P2P network."""
