"""The throw-away PostgreSQL cluster of tests/helpers/pgcluster.py: a restart under a loop
of queries fails some of them and none after it, with the data kept; terminate_backends
ends the sessions it names and no others; close removes the cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.helpers.pgcluster import PgCluster, StopMode, require
from tests.helpers.pgcluster import pg_cluster as pg_cluster  # the fixture

pytestmark = pytest.mark.postgres

ROWS = 50


@pytest.fixture
def cluster_engine(pg_cluster: PgCluster) -> Iterator[Engine]:
    """An engine on the cluster that checks pooled connections before use, with a table
    of ROWS rows (made again for each test)."""
    engine = sa.create_engine(pg_cluster.url, pool_pre_ping=True, connect_args={"connect_timeout": 2})
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS survivors")
        conn.exec_driver_sql("CREATE TABLE survivors (id integer PRIMARY KEY, name text NOT NULL)")
        conn.exec_driver_sql(f"INSERT INTO survivors SELECT i, 'row ' || i FROM generate_series(1, {ROWS}) i")
    yield engine
    engine.dispose()


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM survivors").scalar_one())


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_queries_fail_during_a_restart_and_succeed_after_it(
    pg_cluster: PgCluster, cluster_engine: Engine, mode: StopMode
) -> None:
    assert count_rows(cluster_engine) == ROWS  # a pooled connection that the restart will cut
    started = pg_cluster.log().count("database system is ready to accept connections")
    failures: list[sa.exc.OperationalError] = []
    successes_during = 0
    restart = pg_cluster.restart_in_background(down_seconds=0.5, mode=mode)
    while restart.is_alive():
        try:
            assert count_rows(cluster_engine) == ROWS
            successes_during += 1
        except sa.exc.OperationalError as exc:
            failures.append(exc)
        time.sleep(0.02)
    restart.join()
    assert failures, f"no query failed while the server was down ({successes_during} succeeded)"
    # pg_ctl start -w returned: every query from now on succeeds at the first attempt,
    # pre-ping replacing the pooled connections the restart cut
    for _ in range(5):
        assert count_rows(cluster_engine) == ROWS
    assert pg_cluster.log().count("database system is ready to accept connections") == started + 1


def test_terminate_backends_ends_the_named_sessions_only(pg_cluster: PgCluster) -> None:
    victims = sa.create_engine(pg_cluster.url, connect_args={"application_name": "pgcluster-victim"})
    bystanders = sa.create_engine(pg_cluster.url, connect_args={"application_name": "pgcluster-bystander"})
    try:
        with victims.connect() as victim, bystanders.connect() as bystander:
            assert victim.exec_driver_sql("SELECT 1").scalar_one() == 1
            assert bystander.exec_driver_sql("SELECT 1").scalar_one() == 1

            assert pg_cluster.terminate_backends("pgcluster-victim") == 1
            with pytest.raises(sa.exc.OperationalError, match="terminat"):
                victim.exec_driver_sql("SELECT 1")
            assert bystander.exec_driver_sql("SELECT 1").scalar_one() == 1

            assert pg_cluster.terminate_backends() >= 1  # everyone else, the bystander included
            with pytest.raises(sa.exc.OperationalError):
                bystander.exec_driver_sql("SELECT 1")
            assert pg_cluster.terminate_backends("pgcluster-victim") == 0
    finally:
        victims.dispose()
        bystanders.dispose()


def test_a_cluster_of_its_own_stops_starts_and_is_deleted_on_close() -> None:
    require()
    with PgCluster() as cluster:
        assert cluster.is_running()
        engine = sa.create_engine(cluster.url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE kept (n integer)")
                conn.exec_driver_sql("INSERT INTO kept VALUES (7)")
            cluster.stop()
            assert not cluster.is_running()
            cluster.stop()  # already stopped: nothing to do
            engine.dispose()  # a pooled connection would not notice before its first query
            with pytest.raises(sa.exc.OperationalError, match="refused"):
                engine.connect().close()
            cluster.start()
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT n FROM kept").scalar_one() == 7
        finally:
            engine.dispose()
    assert not cluster.folder.exists()
