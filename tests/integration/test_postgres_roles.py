"""The offload job's least-privilege Postgres role, made by the stacks' set-up (psql running
infra/sql/offload-role.sql as the database owner), against a real Postgres that checks passwords
with SCRAM-SHA-256 as the stacks' server does."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import errors

from harness.servers import PostgresServer, find_binary
from infra.components.postgres import (
    OFFLOAD_ROLE,
    OFFLOAD_ROLE_SQL,
    SETUP_COMMAND,
    SETUP_SQL_PATH,
    scram_sha256_verifier,
)
from runtime.offload.results import write_run

OWNER_PASSWORD = "owner" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    started = PostgresServer(tmp_path_factory.mktemp("postgres-scram"), password=OWNER_PASSWORD)
    started.start()
    yield started
    started.stop()


def owner_dsn(server: PostgresServer, database: str) -> str:
    return f"postgresql://postgres:{OWNER_PASSWORD}@127.0.0.1:{server.port}/{database}"


def offload_dsn(server: PostgresServer, database: str, password: str) -> str:
    return f"postgresql://{OFFLOAD_ROLE}:{password}@127.0.0.1:{server.port}/{database}"


def set_up(server: PostgresServer, database: str, verifier: str | None) -> subprocess.CompletedProcess[str]:
    """What the postgres-setup one-shot runs: psql with the component's arguments and environment."""
    argv = [find_binary("psql"), *(str(OFFLOAD_ROLE_SQL) if a == SETUP_SQL_PATH else a for a in SETUP_COMMAND)]
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": "postgres",
        "PGPASSWORD": OWNER_PASSWORD,
        "PGDATABASE": database,
    }
    if verifier is not None:
        env["OFFLOAD_ROLE_VERIFIER"] = verifier
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def new_verifier() -> tuple[str, str]:
    password = secrets.token_hex(24)
    return password, scram_sha256_verifier(password, secrets.token_hex(12).encode())


@pytest.fixture
def database(server: PostgresServer) -> str:
    """A fresh database with the user's embeddings in public, loaded by the owner."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(owner_dsn(server, "postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(owner_dsn(server, name)) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding real[] NOT NULL)")
        conn.execute("INSERT INTO docs SELECT i, ARRAY[i, 1]::real[] FROM generate_series(1, 10) AS i")
    return name


@pytest.fixture
def offload(server: PostgresServer, database: str) -> str:
    """The set-up run once; the offload role's DSN."""
    password, verifier = new_verifier()
    result = set_up(server, database, verifier)
    assert result.returncode == 0, result.stderr
    return offload_dsn(server, database, password)


def test_our_verifier_is_the_one_postgres_computes_for_the_same_salt(server: PostgresServer) -> None:
    with psycopg.connect(owner_dsn(server, "postgres"), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute("DROP ROLE IF EXISTS verifier_probe")
        conn.execute("CREATE ROLE verifier_probe PASSWORD 'Probe1234abcd'")
        (stored,) = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_probe'").fetchone()
        conn.execute("DROP ROLE verifier_probe")
    iterations, salt = stored.split("$")[1].split(":")
    assert scram_sha256_verifier("Probe1234abcd", base64.b64decode(salt), int(iterations)) == stored


def test_the_offload_role_reads_the_users_tables_and_writes_only_into_its_schema(
    server: PostgresServer, database: str, offload: str
) -> None:
    with psycopg.connect(offload) as conn:
        assert conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
            OFFLOAD_ROLE,
            False,
        )
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (10,)
        write_run(
            conn,
            results_table="topography_points",
            runs_table="topography_points_runs",
            run_id="r1",
            id_type="bigint",
            ids=[1, 2],
            coordinates=np.zeros((2, 2), dtype=np.float32),
            labels=np.array([0, 0]),
            probabilities=np.ones(2),
            record={
                "rows": 2, "dimensions": 2, "clusters": 1, "noise_fraction": 0.0, "device": "cpu",
                "params": {}, "timings": {}, "versions": {}, "resources": {},
            },
        )  # fmt: skip
    with psycopg.connect(owner_dsn(server, database)) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name LIKE 'topography%' ORDER BY table_name"
        ).fetchall()
        assert tables == [(OFFLOAD_ROLE, "topography_points"), (OFFLOAD_ROLE, "topography_points_runs")]
        assert conn.execute("SELECT count(*) FROM offload.topography_points WHERE run_id = 'r1'").fetchone() == (2,)


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO PROGRAM 'id'",  # a shell on the database host, as a superuser could
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE ROLE intruder LOGIN SUPERUSER",
        "ALTER SYSTEM SET log_statement = 'none'",
        "CREATE DATABASE elsewhere",
        "DROP TABLE public.docs",
        "DELETE FROM public.docs",
        "INSERT INTO public.docs VALUES (99, ARRAY[0]::real[])",
        "CREATE TABLE public.planted (a int)",
        "ALTER ROLE offload SUPERUSER",
        "SELECT rolname, rolpassword FROM pg_authid",  # every role's password verifier (pg_read_all_data reads it)
        "SELECT usename, passwd FROM pg_shadow",
        "SELECT * FROM pg_user_mapping",  # foreign servers' passwords
    ],
)
def test_the_offload_role_is_refused_what_only_an_owner_may_do(offload: str, statement: str) -> None:
    with psycopg.connect(offload, autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_offload_role_reads_tables_in_the_users_other_schemas_and_those_made_later(
    server: PostgresServer, database: str
) -> None:
    """No pg_read_all_data, but the embeddings may be anywhere the owner loaded them: a schema of their
    own before the set-up, or a table made after it (default privileges)."""
    with psycopg.connect(owner_dsn(server, database)) as conn:
        conn.execute("CREATE SCHEMA lab")
        conn.execute("CREATE TABLE lab.vectors AS SELECT 1 AS id, ARRAY[1, 2]::real[] AS embedding")
    password, verifier = new_verifier()
    assert (result := set_up(server, database, verifier)).returncode == 0, result.stderr
    with psycopg.connect(owner_dsn(server, database)) as conn:
        conn.execute("CREATE TABLE public.later AS SELECT 2 AS id")
        conn.execute("CREATE TABLE lab.later AS SELECT 3 AS id")
    with psycopg.connect(offload_dsn(server, database, password)) as conn:
        assert conn.execute("SELECT count(*) FROM lab.vectors").fetchone() == (1,)
        assert conn.execute("SELECT id FROM public.later").fetchone() == (2,)
        assert conn.execute("SELECT id FROM lab.later").fetchone() == (3,)


def test_the_set_up_takes_pg_read_all_data_back_from_a_role_an_older_set_up_gave_it(
    server: PostgresServer, database: str, offload: str
) -> None:
    with psycopg.connect(owner_dsn(server, database), autocommit=True) as conn:
        conn.execute("GRANT pg_read_all_data TO offload")  # what the set-up did before #32
    password, verifier = new_verifier()
    assert (result := set_up(server, database, verifier)).returncode == 0, result.stderr
    with psycopg.connect(offload_dsn(server, database, password)) as conn:
        assert conn.execute("SELECT pg_has_role('offload', 'pg_read_all_data', 'MEMBER')").fetchone() == (False,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT rolpassword FROM pg_authid")


def test_the_set_up_runs_again_unchanged_and_a_new_password_replaces_the_old(
    server: PostgresServer, database: str, offload: str
) -> None:
    old_password = psycopg.conninfo.conninfo_to_dict(offload)["password"]
    again = set_up(server, database, scram_sha256_verifier(str(old_password), b"another salt"))
    assert again.returncode == 0, again.stderr
    with psycopg.connect(offload) as conn:
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (10,)
    password, verifier = new_verifier()
    rotated = set_up(server, database, verifier)
    assert rotated.returncode == 0, rotated.stderr
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(offload).close()
    with psycopg.connect(offload_dsn(server, database, password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (OFFLOAD_ROLE,)


def test_the_set_up_without_its_verifier_fails_by_name_and_makes_nothing(server: PostgresServer, database: str) -> None:
    result = set_up(server, f"{database}", None)
    assert result.returncode != 0
    assert "OFFLOAD_ROLE_VERIFIER is not set" in result.stderr
    with psycopg.connect(owner_dsn(server, database)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'offload'").fetchone() == (0,)


def test_the_set_up_script_holds_no_password(tmp_path: Path) -> None:
    """The rendered file (a ConfigFile beside the compose project) is the same for every stack."""
    text = OFFLOAD_ROLE_SQL.read_text()
    assert "PASSWORD :'verifier'" in text
    assert "PASSWORD '" not in text
