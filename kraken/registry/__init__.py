"""The Docker Registry v2 / OCI distribution HTTP API, shared by proxy and agent."""
