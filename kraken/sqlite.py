"""SQLite through ``twisted.enterprise.adbapi``, as the daemons keep their durable state (build-index tags,
the origin's write-back queue): one autocommit connection per database, so every query runs in the pool's single
thread and the reactor thread never touches the file; WAL journal, durable commits, a busy timeout; the schema
created on first use and its version kept in ``PRAGMA user_version``."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from twisted.enterprise import adbapi


class SchemaError(Exception):
    """The database was written by a newer, incompatible version."""


def prepare_connection(conn: sqlite3.Connection, *, schema: str, version: int, what: str) -> None:
    """Run on every new connection (``cp_openfun``): WAL journal, durable commits, a busy timeout, and ``schema``
    (statements separated by ``;``) created if the database is older than ``version``."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found > version:
            raise SchemaError(f"{what} has schema version {found}; this build knows {version}")
        if found < version:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except BaseException:
        conn.close()
        raise


def open_pool(path: str, reactor: Any, *, schema: str, version: int, what: str) -> adbapi.ConnectionPool:
    """One autocommit connection to ``path``, prepared by ``prepare_connection``. ``what`` names the database in
    errors ("tag database")."""
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,
        cp_min=1,
        cp_max=1,
        cp_reactor=reactor,
        cp_openfun=functools.partial(prepare_connection, schema=schema, version=version, what=what),
    )
