"""Short sessions of their own for the demo: run a `.sql` script, play a tagged client workload, read a table."""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from exporter import APPLICATION_NAME
from exporter.errors import DatabaseUnavailable
from exporter.pg.dsn import mask_dsn, scrub
from exporter.pg.statements import load_query


def run_script(dsn: str, name: str, **values: object) -> None:
    """Run `queries/<name>.sql` (one or more statements) in one autocommit session; each `{key}` in the file is
    replaced by `values[key]` as an SQL literal."""
    statement = sql.SQL(load_query(name)).format(**{k: sql.Literal(v) for k, v in values.items()})
    try:
        with psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"{name}.sql failed ({mask_dsn(dsn)}): {scrub(str(exc), dsn)}") from exc


def run_tagged(dsn: str, application_name: str, query_name: str) -> Literal["completed", "terminated", "cancelled"]:
    """A client workload: run `queries/<query_name>.sql`, whose `{application_name}` is replaced by the tag (the
    file tags its own session with `SET application_name = ...`), in a new session, and say how it ended. Used by
    the demo to play the part of an application's sessions."""
    statement = sql.SQL(load_query(query_name).strip()).format(application_name=sql.Literal(application_name))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # No parameters: sent as one simple query, as `psql -c` sends it, so pg_stat_activity shows it whole.
            conn.execute(statement)
    except pgerrors.QueryCanceled:
        return "cancelled"
    except (pgerrors.AdminShutdown, psycopg.OperationalError):
        # pg_terminate_backend ends the session with AdminShutdown, seen by the client as a lost connection.
        return "terminated"
    return "completed"


def fetch_table(dsn: str, query_name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The column names and every row of `queries/<query_name>.sql`, read in one short autocommit session."""
    try:
        with psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
            cur = conn.execute(load_query(query_name).encode())
            columns = [c.name for c in cur.description or ()]
            return columns, cur.fetchall()
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"{query_name}.sql failed ({mask_dsn(dsn)}): {scrub(str(exc), dsn)}") from exc
