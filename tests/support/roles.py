"""Roles and databases of a test's own: the one `roles` fixture, and `Roles` for servers other than the shared one.

Roles and databases are server-wide, shared by every test and every run against the server, so each gets a name of
its own (`unique_name`) and is dropped when the test ends, once the sessions using it have ended (neither can be
dropped while in use).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from harness.waiting import eventually
from tests.support.servers import Server

LEAST_PRIVILEGE = Path(__file__).resolve().parents[2] / "docs" / "least-privilege.sql"
"""The documented monitoring role, created by `Roles.least_privilege` as the docs give it."""


def unique_name(prefix: str) -> str:
    """A name for a server-wide object (role, database) of this test's own: `prefix` and 8 hex digits. Such objects
    are shared by every test and every run against the server, so a fixed name collides and outlives the test."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Role:
    """A login role made by `Roles`: its name, its password and a DSN logging in as it."""

    name: str
    password: str
    dsn: str
    """To the database of the server's own DSN (`postgres` on a local cluster)."""


class Roles:
    """Makes login roles and databases on `server` under names of their own, and drops them all (`drop`)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.dbname = str(conninfo_to_dict(server.dsn).get("dbname") or "postgres")
        self.roles: list[str] = []
        self.databases: list[str] = []

    def _role(self, name: str, password: str) -> Role:
        self.roles.append(name)
        return Role(name, password, self.server.dsn_for(self.dbname, user=name, password=password))

    def login(self, prefix: str, password: str, *, superuser: bool = False, member_of: Iterable[str] = ()) -> Role:
        """A login role named `prefix`_<8 hex digits>, a superuser or not, granted the roles `member_of` (e.g.
        pg_monitor, pg_signal_backend)."""
        role = self._role(unique_name(prefix), password)
        create = "CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}" if superuser else "CREATE ROLE {} LOGIN PASSWORD {}"
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL(create).format(sql.Identifier(role.name), sql.Literal(password)))
            for granted in member_of:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(role.name)))
        return role

    def least_privilege(self, prefix: str, password: str) -> Role:
        """The monitoring role exactly as docs/least-privilege.sql makes it, under a name of its own."""
        role = self._role(unique_name(prefix), password)
        script = LEAST_PRIVILEGE.read_text().replace("change-me", password)
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(re.sub(r"\bpgparent\b", role.name, script).encode())
        return role

    def database(self, prefix: str) -> str:
        """A database named `prefix`_<8 hex digits>; its name."""
        name = unique_name(prefix)
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        return name

    def drop(self) -> None:
        """End the sessions of these roles and in these databases, wait until they are gone, then drop the databases
        and the roles."""
        if not self.roles and not self.databases:
            return
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            in_use = "FROM pg_stat_activity WHERE (usename = ANY(%s) OR datname = ANY(%s)) AND pid <> pg_backend_pid()"
            conn.execute("SELECT pg_terminate_backend(pid) " + in_use, [self.roles, self.databases])
            eventually(lambda: conn.execute("SELECT count(*) " + in_use, [self.roles, self.databases]).fetchone()
                       == (0,), what="their sessions gone")
            for database in self.databases:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
            for role in self.roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        self.roles.clear()
        self.databases.clear()


@pytest.fixture
def roles(pg: Server) -> Iterator[Roles]:
    """Roles and databases on the shared server, of this test's own, dropped when it ends."""
    made = Roles(pg)
    try:
        yield made
    finally:
        made.drop()
