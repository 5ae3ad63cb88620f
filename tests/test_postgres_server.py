"""The tests' private PostgreSQL (tests/postgres.py) is a real server that tests can rely on."""

from __future__ import annotations

import psycopg
import pytest

from tests.postgres import PostgresServer


def test_clients_connect_with_a_password_over_loopback(postgres: PostgresServer) -> None:
    dbname = postgres.create_database()
    with psycopg.connect(postgres.libpq(dbname)) as conn:
        row = conn.execute("SELECT current_database(), inet_server_addr()::text, "
                           "inet_server_port()").fetchone()
    assert row == (dbname, "127.0.0.1/32", postgres.port)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.libpq(dbname).replace(postgres.password, "wrong"))


def test_each_database_is_new_and_empty(postgres: PostgresServer) -> None:
    first, second = postgres.create_database(), postgres.create_database()
    assert first != second
    with psycopg.connect(postgres.libpq(first)) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with psycopg.connect(postgres.libpq(second)) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_server_does_not_run_as_root(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.libpq("postgres")) as conn:
        [data_dir] = conn.execute("SHOW data_directory").fetchone()
    assert data_dir == str(postgres.data)
    assert postgres.data.stat().st_uid != 0


def test_stopped_server_refuses_and_restarts_with_its_data(postgres: PostgresServer) -> None:
    dbname = postgres.create_database()
    with psycopg.connect(postgres.libpq(dbname)) as conn:
        conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    postgres.stop()
    try:
        assert not postgres.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres.libpq(dbname), connect_timeout=5)
    finally:
        postgres.start()
    with psycopg.connect(postgres.libpq(dbname)) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
