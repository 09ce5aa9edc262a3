"""backup-staging-database and verify-restore: the pure rules, then the flows against
real PostgreSQL servers, a local path and an S3 endpoint over HTTP (moto's server)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from flows.backup import backup_staging_database, verify_restore_drill
from rsolv_staging.backups import (
    BackupFile,
    BackupManifest,
    RetentionPolicy,
    RtoRule,
    check_scratch_name,
    compare_files,
    parse_setvals,
    plan_retention,
    rto_regression,
)
from rsolv_staging.environments import topology_from_mapping
from rsolv_staging.exceptions import DataError, GuardError
from tasks.postgres import restore_backup
from tasks.storage import StorageLocation, apply_retention, list_backups
from tests.plugins.postgres import PostgresDatabase, PostgresServer
from tests.plugins.s3 import S3Endpoint

REPO = Path(__file__).resolve().parent.parent

# --- the pure rules ----------------------------------------------------------------


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def test_retention_keeps_the_newest_per_day_and_per_week_and_nothing_else() -> None:
    """7 daily + 4 weekly over six weeks of two backups a day (with a gap): exactly the
    newest of each of the 7 newest days that have a backup, plus the newest of each of
    the 4 newest ISO weeks; every other backup is deleted."""
    backups: dict[str, datetime] = {}
    day = datetime(2026, 10, 19, tzinfo=UTC)  # a Monday, ISO week 43
    while day <= datetime(2026, 11, 29, tzinfo=UTC):  # a Sunday, ISO week 48 (23rd-29th)
        if not datetime(2026, 11, 24, tzinfo=UTC) <= day <= datetime(2026, 11, 26, tzinfo=UTC):
            for hour in (2, 14):
                backups[f"{day:%m%d}-{hour:02d}"] = day.replace(hour=hour)
        day += timedelta(days=1)
    plan = plan_retention(backups, RetentionPolicy(daily=7, weekly=4), at("2026-11-30"))
    # The 7 newest days with a backup skip the 24th-26th (none that day).
    daily = {"1129-14", "1128-14", "1127-14", "1123-14", "1122-14", "1121-14", "1120-14"}
    # Newest of weeks 48 (the 29th), 47 (16th-22nd), 46 (9th-15th), 45 (2nd-8th).
    weekly = {"1129-14", "1122-14", "1115-14", "1108-14"}
    assert set(plan.keep) == daily | weekly
    assert set(plan.delete) == set(backups) - daily - weekly
    assert plan.keep["1129-14"] == ["newest", "daily 2026-11-29", "weekly 2026-W48"]
    assert plan.keep["1122-14"] == ["daily 2026-11-22", "weekly 2026-W47"]
    assert plan.keep["1115-14"] == ["weekly 2026-W46"]


def test_retention_by_age_never_deletes_the_newest_and_keeps_the_last_n() -> None:
    """max_age_days drops older backups even when a daily slot chose them, but the newest
    stays whatever its age; ``last`` keeps the N newest even on one day."""
    backups = {"old": at("2026-01-01"), "older": at("2025-12-01"), "oldest": at("2025-11-01")}
    plan = plan_retention(backups, RetentionPolicy(max_age_days=30), at("2026-06-01"))
    assert plan.keep == {"old": ["newest", "daily 2026-01-01", "weekly 2026-W01"]}
    assert sorted(plan.delete) == ["older", "oldest"]
    same_day = {f"b{h}": at("2026-06-01", h) for h in range(5)}
    plan = plan_retention(same_day, RetentionPolicy(last=3, daily=7, weekly=4), at("2026-06-02"))
    assert sorted(plan.keep) == ["b2", "b3", "b4"]
    assert sorted(plan.delete) == ["b0", "b1"]
    assert plan_retention({}, RetentionPolicy(), at("2026-06-01")).keep == {}


@pytest.mark.parametrize(
    ("rto", "trend", "regressed"),
    [
        (30.0, [10.0, 11.0, 12.0], True),  # 2.7x the median, 19 s over
        (17.0, [10.0, 11.0, 12.0], True),  # over max(1.5 x 11, 11 + 5) = 16.5 s
        (16.0, [10.0, 11.0, 12.0], False),  # under it
        (1.5, [0.5, 0.6, 0.7], False),  # 2.5x, but within the 5 s of slack
        (100.0, [10.0, 11.0], False),  # two drills make no trend
    ],
    ids=["slow", "over-limit", "under-limit", "noise", "no-trend"],
)
def test_rto_regression_against_the_trend(rto: float, trend: list[float], regressed: bool) -> None:
    """Slower than 1.5x the trend's median and more than 5 s above it, with at least
    three earlier drills."""
    rule = RtoRule(ratio=1.5, min_seconds=5.0, min_history=3)
    assert (rto_regression(rto, trend, rule) is not None) is regressed


def test_sequence_values_are_read_from_the_dump_with_quoted_names() -> None:
    """setval lines of pg_restore's script, keyed schema.name as the catalog reads them."""
    script = (
        "SELECT pg_catalog.setval('public.users_id_seq', 42, true);\n"
        'SELECT pg_catalog.setval(\'"Odd Schema"."we""ird.seq"\', 1, false);\n'
        "SELECT pg_catalog.setval('app.\"it''s\"', -5, true);\n"
    )
    assert parse_setvals(script) == {
        "public.users_id_seq": (42, True),
        'Odd Schema.we"ird.seq': (1, False),
        "app.it's": (-5, True),
    }


@pytest.mark.parametrize(
    "name",
    [
        "rsolv",
        "rsolv_sync_old",
        "rsolv_sync_new",
        "postgres",
        "template1",
        "rsolv_copy",
        "_restore_drill",
    ],
)
def test_the_drill_refuses_any_scratch_name_but_a_drills(name: str) -> None:
    """The live database, the sync's side databases (the rollback copy), system databases
    and names without the drill's suffix are refused; ``<x>_restore_drill`` is accepted."""
    with pytest.raises(GuardError, match="refusing to restore into"):
        check_scratch_name(name, "rsolv")
    assert check_scratch_name("rsolv_restore_drill", "rsolv") == "rsolv_restore_drill"


def test_file_comparison_names_every_bad_file() -> None:
    """Missing, short, corrupted and unexpected files are each named."""
    expected = {
        n: BackupFile(sha256="a" * 64, bytes=10) for n in ("toc.dat", "1.dat.gz", "2.dat.gz")
    }
    actual = {"toc.dat": (10, "a" * 64), "1.dat.gz": (10, "b" * 64), "3.dat.gz": (1, None)}
    assert compare_files(expected, actual) == [
        "file 1.dat.gz is corrupted: its SHA-256 differs from the manifest",
        "file 2.dat.gz is missing",
        "file 3.dat.gz is not in the manifest",
    ]


# --- the flows, against real servers and storage -----------------------------------

STAGING_SQL = """
CREATE SCHEMA app;
CREATE TABLE app.users (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE app.events (id bigserial PRIMARY KEY, user_id bigint REFERENCES app.users (id),
  payload jsonb NOT NULL);
CREATE INDEX events_payload ON app.events USING gin (payload);
CREATE TABLE app."Odd Name" (v int);
CREATE TABLE app.no_columns ();
CREATE SEQUENCE app.invoice_no START 1000;
CREATE VIEW app.active AS SELECT id, email FROM app.users WHERE id % 2 = 0;
COMMENT ON TABLE app.users IS 'who';
INSERT INTO app.users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 3000) g;
INSERT INTO app.events (user_id, payload)
  SELECT 1 + g % 3000, jsonb_build_object('n', g, 'k', 'x' || (g % 17))
  FROM generate_series(1, 20000) g;
INSERT INTO app."Odd Name" SELECT g FROM generate_series(1, 7) g;
INSERT INTO app.no_columns SELECT FROM generate_series(1, 4);
SELECT nextval('app.invoice_no'), nextval('app.invoice_no');
"""


@pytest.fixture
def live(staging_database: PostgresDatabase) -> PostgresDatabase:
    """Staging's live database, holding tables, a column-less one, sequences, a view."""
    with psycopg.connect(staging_database.dsn, autocommit=True) as conn:
        conn.execute(STAGING_SQL)
    return staging_database


@pytest.fixture(params=["local", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backup location: a local path, or a bucket on the S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "backups")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/staging"


@pytest.fixture
def backup_env(
    prefect_api: None,
    live: PostgresDatabase,
    pg_production: PostgresServer,
    pg_staging: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_endpoint: S3Endpoint,
) -> Iterator[Path]:
    """The environment model (production on the production server, staging's live
    database this test's), the DSN secrets and S3 keys in the environment; the backup
    location defaults to a local path. Yields the model file."""
    model = tmp_path / "environments.yaml"
    model.write_text(
        yaml.safe_dump(
            {
                "production": {"database": {"host": "127.0.0.1", "port": pg_production.port}},
                "staging": {
                    "database": {
                        "host": "127.0.0.1",
                        "port": pg_staging.port,
                        "name": live.name,
                        "service": "staging-postgres",
                    }
                },
            }
        )
    )
    monkeypatch.setenv("RSOLV_ENVIRONMENTS_FILE", str(model))
    monkeypatch.setenv("RSOLV_SECRET_STAGING_DATABASE_DSN", live.dsn)
    monkeypatch.setenv("RSOLV_SECRET_STAGING_DATABASE_ADMIN_DSN", pg_staging.dsn)
    monkeypatch.setenv("RSOLV_BACKUP_URL", str(tmp_path / "backups"))
    monkeypatch.setenv("RSOLV_BACKUP_S3_ENDPOINT_URL", s3_endpoint.url)
    # The S3 keys through the project's secret source (a Secret block or these variables).
    monkeypatch.setenv(
        "RSOLV_SECRET_STAGING_BACKUP_STORAGE_ACCESS_KEY_ID", s3_endpoint.access_key_id
    )
    monkeypatch.setenv(
        "RSOLV_SECRET_STAGING_BACKUP_STORAGE_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key
    )
    yield model
    pg_staging.drop_database(live.name + "_restore_drill")


def location(url: str, s3: S3Endpoint) -> StorageLocation:
    return StorageLocation(
        url=url, endpoint_url=s3.url, credentials_secret="staging-backup-storage"
    )


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("app.users", "app.events", 'app."Odd Name"', "app.no_columns")
        }


def latest_artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifacts[0].data)


def databases(server: PostgresServer) -> set[str]:
    with psycopg.connect(server.dsn) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_backup_and_restore_drill_round_trip(
    backup_env: Path,
    storage_url: str,
    live: PostgresDatabase,
    pg_staging: PostgresServer,
    s3_endpoint: S3Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup's manifest holds the live database's rows, sequences and every file's
    SHA-256 as stored; the drill restores it into the scratch database, verifies it,
    records its RTO in the location's history, drops the scratch database and reports
    what can be restored."""
    monkeypatch.setenv("RSOLV_BACKUP_URL", storage_url)
    result = backup_staging_database(jobs=2)
    manifest = result.manifest
    assert manifest.rows == {
        "app.users": 3000,
        "app.events": 20000,
        "app.Odd Name": 7,
        "app.no_columns": 4,
    }
    assert manifest.sequences["app.invoice_no"] == (1001, True)
    assert manifest.sequences["app.users_id_seq"] == (3000, True)
    assert manifest.server_version == pg_staging.version
    assert "toc.dat" in manifest.files
    assert len(manifest.files) > 3

    # Every file as stored (read through storage, not the flow's own copy) matches.
    store = location(storage_url, s3_endpoint)
    from tasks.storage import open_location

    fs, layout = open_location(store)
    for name, entry in manifest.files.items():
        data = fs.cat_file(f"{layout.backup(manifest.backup_id)}/{name}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)
    assert [m.backup_id for m in list_backups.fn(store)] == [manifest.backup_id]

    record = verify_restore_drill()
    assert record.ok
    assert record.backup_id == manifest.backup_id
    assert record.rto_seconds is not None
    assert record.rto_seconds >= record.restore_seconds > 0
    assert live.name + "_restore_drill" not in databases(pg_staging)
    history = json.loads(fs.cat_file(layout.history("staging")))
    assert [(h["backup_id"], h["ok"]) for h in history] == [(manifest.backup_id, True)]
    text = latest_artifact("staging-recoverability")
    assert f"backup `{manifest.backup_id}`" in text
    assert "passed" in text
    assert pg_staging.password not in text


def test_a_corrupted_file_fails_the_drill_naming_it_and_notifies(
    backup_env: Path, live: PostgresDatabase, pg_staging: PostgresServer, tmp_path: Path
) -> None:
    """One flipped byte in one data file: the drill fails before restoring, naming that
    file; the failure is recorded in the history and sent to the notification block."""
    manifest = backup_staging_database().manifest
    data_file = max(
        (n for n in manifest.files if n.endswith(".gz")), key=lambda n: manifest.files[n].bytes
    )
    path = tmp_path / "backups" / "backups" / manifest.backup_id / data_file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with webhook() as (url, received):
        block = CustomWebhookNotificationBlock(
            name="backup-drills", url=url, json_data={"text": "{{subject}}: {{body}}"}
        )
        block.save("backup-drills", overwrite=True)
        try:
            with pytest.raises(DataError, match=f"file {data_file} is corrupted"):
                verify_restore_drill(notify_block="backup-drills")
        finally:
            CustomWebhookNotificationBlock.delete("backup-drills")
    assert len(received) == 1
    assert data_file in received[0]["text"]
    assert received[0]["text"].startswith("Restore drill failed")
    history = json.loads((tmp_path / "backups" / "drills" / "staging.json").read_text())
    assert [h["ok"] for h in history] == [False]
    assert live.name + "_restore_drill" not in databases(pg_staging)


def test_the_drill_refuses_the_live_database_before_any_side_effect(
    backup_env: Path, live: PostgresDatabase, pg_staging: PostgresServer, tmp_path: Path
) -> None:
    """scratch_database = the live name: refused before reading anything; the live
    database keeps its rows. The restore task refuses it on its own too."""
    before = counts(live.dsn)
    with pytest.raises(GuardError, match="staging's live database"):
        verify_restore_drill(scratch_database=live.name)
    production = topology_from_mapping({}).production.database
    with pytest.raises(GuardError, match="staging's live database"):
        restore_backup.fn(
            SecretStr(pg_staging.dsn),
            production,
            tmp_path,
            None,  # type: ignore[arg-type]
            scratch=live.name,
            live=live.name,
        )
    assert counts(live.dsn) == before
    assert not (tmp_path / "backups").exists()


def test_a_failing_restore_notifies_and_drops_the_scratch_database(
    backup_env: Path, live: PostgresDatabase, pg_staging: PostgresServer
) -> None:
    """pg_restore fails (a role the dump's policy names is dropped): the run fails with
    pg_restore's message, the notification is sent and the scratch database is gone."""
    with psycopg.connect(pg_staging.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE backup_test_reader")
    with psycopg.connect(live.dsn, autocommit=True) as conn:
        conn.execute("CREATE POLICY readers ON app.users TO backup_test_reader USING (true)")
    try:
        backup_staging_database()
    finally:
        with psycopg.connect(live.dsn, autocommit=True) as conn:
            conn.execute("DROP POLICY readers ON app.users")
        with psycopg.connect(pg_staging.dsn, autocommit=True) as conn:
            conn.execute("DROP ROLE backup_test_reader")
    with webhook() as (url, received):
        CustomWebhookNotificationBlock(
            name="backup-drills", url=url, json_data={"text": "{{subject}}: {{body}}"}
        ).save("backup-drills", overwrite=True)
        try:
            with pytest.raises(DataError, match="pg_restore"):
                verify_restore_drill(notify_block="backup-drills")
        finally:
            CustomWebhookNotificationBlock.delete("backup-drills")
    assert len(received) == 1
    assert "backup_test_reader" in received[0]["text"]
    assert live.name + "_restore_drill" not in databases(pg_staging)


def fake_backup(root: Path, backup_id: str, created: datetime) -> None:
    """A complete backup as the layout has it (its files are not a dump: retention
    reads only manifests)."""
    directory = root / "backups" / backup_id
    directory.mkdir(parents=True)
    (directory / "toc.dat").write_bytes(b"x")
    manifest = BackupManifest(
        backup_id=backup_id,
        database="rsolv",
        source="u@h:5432/rsolv",
        server_version="18.6",
        server_version_num=180006,
        pg_dump_major=18,
        jobs=1,
        created_at=created,
        duration_seconds=1,
        database_bytes=1,
        rows={},
        sequences={},
        objects={},
        files={"toc.dat": BackupFile(sha256=hashlib.sha256(b"x").hexdigest(), bytes=1)},
    )
    (directory / "manifest.json").write_text(manifest.model_dump_json())


def test_retention_on_a_location_deletes_exactly_what_the_plan_says(
    prefect_api: None, tmp_path: Path
) -> None:
    """Twenty daily backups and a partial one: 3 daily + 2 weekly leaves exactly the
    planned five backups' directories; the newest is kept even if the clock says it is
    in the future."""
    root = tmp_path / "loc"
    ids = {}
    for day in range(1, 21):
        backup_id = f"202611{day:02d}T020000Z-00000{day % 10}"
        ids[day] = backup_id
        fake_backup(root, backup_id, datetime(2026, 11, day, 2, tzinfo=UTC))
    plan = apply_retention.fn(
        StorageLocation(url=str(root)),
        RetentionPolicy(last=1, daily=3, weekly=2),
        datetime(2026, 11, 20, 3, tzinfo=UTC),
        newest=ids[20],
    )
    # Days 20, 19, 18; weeks 47 (16th-22nd: the 20th) and 46 (9th-15th: the 15th).
    assert sorted(plan.keep) == sorted([ids[20], ids[19], ids[18], ids[15]])
    remaining = sorted(p.name for p in (root / "backups").iterdir())
    assert remaining == sorted(plan.keep)


def start_backup(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """backup-staging-database in a process of its own (killed by the test)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from flows.backup import backup_staging_database
        backup_staging_database()
        """
    )
    return subprocess.Popen([sys.executable, "-c", script], env=env)


def test_a_killed_backup_never_counts_and_the_next_run_removes_it(
    backup_env: Path, live: PostgresDatabase, tmp_path: Path, s3_endpoint: S3Endpoint
) -> None:
    """SIGKILL to the flow's process while its pg_dump runs (held up by a lock): the
    previous backup is untouched, the partial one is not listed, pg_dump died with the
    flow, and the next run removes the partial backup and keeps the previous one."""
    keep_both = RetentionPolicy(last=5)
    first = backup_staging_database(retention=keep_both).manifest
    root = tmp_path / "backups"
    before = {p.name: p.read_bytes() for p in (root / "backups" / first.backup_id).iterdir()}
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    blocker = psycopg.connect(live.dsn)
    blocker.execute("LOCK TABLE app.events IN ACCESS EXCLUSIVE MODE")
    child = start_backup(env)
    try:
        deadline = time.monotonic() + 60
        dumps: list[psutil.Process] = []
        while not dumps:
            assert child.poll() is None, "the backup ended before it could be killed"
            assert time.monotonic() < deadline, "pg_dump never started"
            dumps = [
                p
                for p in psutil.Process(child.pid).children(recursive=True)
                if p.name() == "pg_dump"
            ]
            time.sleep(0.05)
        while not list((root / "partial").glob("*")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # pg_dump connected and waiting for its lock
        child.send_signal(signal.SIGKILL)  # the flow's process only: pg_dump must follow
        child.wait()
        _gone, alive = psutil.wait_procs(dumps, timeout=5)
        assert not alive, "pg_dump outlived the flow"
    finally:
        if child.poll() is None:
            child.kill()
        blocker.rollback()
        blocker.close()
    partial = [p.name for p in (root / "partial").iterdir()]
    assert len(partial) == 1
    store = StorageLocation(url=str(root))
    assert [m.backup_id for m in list_backups.fn(store)] == [first.backup_id]

    second = backup_staging_database(retention=keep_both)
    assert second.removed_partial == partial
    assert not list((root / "partial").iterdir())
    assert [m.backup_id for m in list_backups.fn(store)] == [
        first.backup_id,
        second.manifest.backup_id,
    ]
    after = {p.name: p.read_bytes() for p in (root / "backups" / first.backup_id).iterdir()}
    assert after == before


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        _Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class webhook:
    """A webhook receiver on 127.0.0.1 recording each JSON body it is sent."""

    def __enter__(self) -> tuple[str, list[dict[str, Any]]]:
        _Hook.received = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook", _Hook.received

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
