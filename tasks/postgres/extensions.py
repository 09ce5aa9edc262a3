"""What ``pg_dump --schema-only`` leaves out and the copy adds: extensions'
configuration tables, large objects, and the source database's own properties
(settings, role settings, comment)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.environments import Database
from rsolv_staging.exceptions import DataError
from rsolv_staging.sync import (
    DatabaseProperties,
    choose_database_settings,
    database_properties_query,
    references_first,
    split_setting,
)
from tasks.postgres.catalog import _Relation
from tasks.postgres.connections import _error, _redact, connect_for_writing
from tasks.postgres.sessions import _admin, source_session

# Extensions' configuration tables and sequences (pg_extension_config_dump): their rows
# are the user's (pg_partman's partition sets, PostGIS's added spatial references), and
# pg_dump copies them. Per relation: its extension and version, kind, name, the columns
# COPY takes, and the other tables its foreign keys reference.
_EXTENSION_CONFIG = """
SELECT e.extname, e.extversion, c.relkind, n.nspname, c.relname,
       coalesce(array_agg(a.attname ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                '{}'),
       coalesce((SELECT array_agg(DISTINCT rn.nspname || '.' || r.relname)
                 FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid
                 JOIN pg_namespace rn ON rn.oid = r.relnamespace
                 WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid), '{}')
FROM pg_extension e
CROSS JOIN LATERAL unnest(e.extconfig) AS x(cfg)
JOIN pg_class c ON c.oid = x.cfg JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid
GROUP BY e.extname, e.extversion, c.oid, c.relkind, n.nspname, c.relname
ORDER BY 1, 4, 5
"""


class _ConfigRelation(_Relation):
    extension: str
    version: str
    kind: str
    references: list[str]  # schema.table keys


def _copy_extension_config(
    source_dsn: SecretStr,
    snapshot: str,
    new_dsn: SecretStr,
    production: Database,
    relations: Sequence[_ConfigRelation],
) -> tuple[dict[str, int], list[str]]:
    """Copy the extensions' configuration tables whole (after emptying what the
    extension's script inserted on staging) and set their sequences; returns rows per
    table, and what was left out and why.

    Per extension, one transaction: its tables emptied together (they may reference each
    other) and loaded referenced first. Left out: an extension at another version on
    staging (its tables may differ), and pg_cron (production's jobs would run on staging).
    """
    rows: dict[str, int] = {}
    left_out: list[str] = []
    by_extension: dict[str, list[_ConfigRelation]] = {}
    for relation in relations:
        by_extension.setdefault(relation.extension, []).append(relation)
    try:
        with (
            source_session(source_dsn, snapshot) as src,
            connect_for_writing(new_dsn, production) as dst,
        ):
            installed = {
                str(n): str(v)
                for n, v in dst.execute("SELECT extname, extversion FROM pg_extension")
            }
            dst.rollback()
            for extension, members in sorted(by_extension.items()):
                version = members[0].version
                if extension == "pg_cron":
                    left_out.append("pg_cron's jobs: production's schedule would run on staging")
                    continue
                if installed.get(extension) != version:
                    left_out.append(
                        f"the configuration rows of extension {extension}: {version} on "
                        f"production, {installed.get(extension)} on staging"
                    )
                    continue
                rows.update(_copy_config_of(src, dst, members))
    except psycopg.Error as exc:
        raise _error("copying extensions' configuration tables failed", exc, source_dsn) from None
    return rows, left_out


def _copy_config_of(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    members: Sequence[_ConfigRelation],
) -> dict[str, int]:
    """One extension's configuration tables and sequences, in one transaction."""
    rows: dict[str, int] = {}
    tables = {m.key: m for m in members if m.kind == "r"}
    with dst.transaction():
        if tables:
            dst.execute(
                sql.SQL("TRUNCATE ONLY {}").format(
                    sql.SQL(", ").join(tables[t].ident for t in sorted(tables))
                )
            )
        for name in references_first({t: m.references for t, m in tables.items()}):
            columns = tables[name].column_list
            out = sql.SQL("COPY {}{} TO STDOUT (FORMAT binary)")
            into = sql.SQL("COPY {}{} FROM STDIN (FORMAT binary)")
            writer = dst.cursor()
            with (
                src.cursor().copy(out.format(tables[name].ident, columns)) as reader,
                writer.copy(into.format(tables[name].ident, columns)) as loader,
            ):
                for block in reader:
                    loader.write(block)
            rows[name] = writer.rowcount
        for member in members:
            if member.kind != "S":
                continue
            row = src.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(member.ident)
            ).fetchone()
            assert row is not None
            dst.execute(
                "SELECT setval(%s::regclass, %s, %s)",
                (member.ident.as_string(dst), row[0], row[1]),
            )
    return rows


# Large objects come with their listing, 256 at a time, with their first 64 KiB (most fit
# whole: at most 16 MiB in memory); longer ones follow in 1 MiB pieces.
_LO_BATCH = 256
_LO_FIRST = 1 << 16
_LO_PIECE = 1 << 20


def _copy_large_objects(
    source_dsn: SecretStr,
    snapshot: str,
    new_dsn: SecretStr,
    production: Database,
    *,
    empty: bool,
) -> tuple[int, int]:
    """Copy the source's large objects (under the snapshot) with their OIDs and comments;
    ``pg_dump --schema-only`` leaves them out. Returns (objects, bytes).

    Read with ``lo_get`` (no large object is opened for writing on the source), written
    with ``lo_from_bytea``/``lo_put``, a batch per round trip (pipelined). With ``empty``
    each object is created empty under its OID, and no content is read.
    """
    try:
        with (
            source_session(source_dsn, snapshot) as src,
            connect_for_writing(new_dsn, production) as dst,
        ):
            with src.cursor(name="rsolv_large_objects") as objects, dst.cursor() as out:
                count, nbytes, longer = _copy_large_object_firsts(objects, out, dst, empty=empty)
                nbytes += _copy_large_object_rests(src, out, longer)
            dst.commit()
    except psycopg.Error as exc:
        raise _error("copying large objects failed", exc, source_dsn) from None
    return count, nbytes


def _copy_large_object_firsts(
    objects: psycopg.ServerCursor[Any],
    out: psycopg.Cursor[Any],
    dst: psycopg.Connection[Any],
    *,
    empty: bool,
) -> tuple[int, int, list[int]]:
    """Every large object with its first piece and comment, a batch per transaction;
    returns (objects, bytes, the objects longer than their first piece)."""
    count = nbytes = 0
    longer: list[int] = []
    content = (
        sql.SQL("''::bytea")
        if empty
        else sql.SQL("lo_get(m.oid, 0, {})").format(sql.Literal(_LO_FIRST))
    )
    objects.itersize = _LO_BATCH
    objects.execute(
        sql.SQL(
            "SELECT m.oid, {}, obj_description(m.oid, 'pg_largeobject') "
            "FROM pg_largeobject_metadata m ORDER BY m.oid"
        ).format(content)
    )
    while batch := objects.fetchmany(_LO_BATCH):
        out.executemany("SELECT lo_from_bytea(%s, %s)", [(oid, data) for oid, data, _ in batch])
        comments = [
            sql.SQL("COMMENT ON LARGE OBJECT {} IS {}").format(
                sql.Literal(int(oid)), sql.Literal(comment)
            )
            for oid, _, comment in batch
            if comment is not None
        ]
        if comments:  # a utility statement takes no parameters: one string
            out.execute(sql.SQL("; ").join(comments))
        # Each COMMENT holds a lock until commit: one transaction for all would
        # run out of lock slots (the new database has no readers yet).
        dst.commit()
        count += len(batch)
        nbytes += sum(len(data) for _, data, _ in batch)
        longer += [int(oid) for oid, data, _ in batch if len(data) == _LO_FIRST]
    return count, nbytes, longer


def _copy_large_object_rests(
    src: psycopg.Connection[Any], out: psycopg.Cursor[Any], longer: Sequence[int]
) -> int:
    """The rest of each longer large object, piece by piece; returns its bytes."""
    nbytes = 0
    for oid in longer:
        offset = _LO_FIRST
        while True:
            row = src.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, _LO_PIECE)).fetchone()
            piece = bytes(row[0]) if row else b""
            if not piece:
                break
            out.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, piece))
            offset += len(piece)
            nbytes += len(piece)
    return nbytes


def large_objects_checksum(conn: psycopg.Connection[Any]) -> str:
    """An order-independent checksum of every large object's OID and content.

    Read in pieces, as the copy reads them (``md5(lo_get(oid))`` would need each object
    whole in one value, and fails above 1 GB): objects 256 at a time with their first
    64 KiB, longer ones piece by piece; each hashed with its OID, the hashes summed.
    """
    oids = [int(r[0]) for r in conn.execute("SELECT oid FROM pg_largeobject_metadata")]
    total = 0
    for start in range(0, len(oids), _LO_BATCH):
        firsts = conn.execute(
            "SELECT m, lo_get(m, 0, %s) FROM unnest(%s::oid[]) AS m",
            (_LO_FIRST, oids[start : start + _LO_BATCH]),
        ).fetchall()
        for oid, first in firsts:
            digest = hashlib.blake2b(f"{oid}:".encode(), digest_size=16)
            digest.update(first)
            offset, more = len(first), len(first) == _LO_FIRST
            while more:
                row = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, _LO_PIECE)).fetchone()
                piece = bytes(row[0]) if row else b""
                digest.update(piece)
                offset += len(piece)
                more = len(piece) == _LO_PIECE
            total = (total + int.from_bytes(digest.digest(), "big")) % (1 << 128)
    return f"{len(oids)}:{total:032x}"


def read_database_properties(
    conn: psycopg.Connection[Any], name: str | None = None
) -> DatabaseProperties:
    """Encoding, locale, settings and comment of database ``name`` (default: the
    connection's own)."""
    row = conn.execute(database_properties_query(conn.info.server_version), (name,)).fetchone()
    if row is None:
        raise DataError(f"database {name} does not exist")
    encoding, provider, collate, ctype, locale, rules, settings, comment, by_role = row
    return DatabaseProperties(
        encoding=str(encoding),
        locale_provider=str(provider),
        collate=str(collate),
        ctype=str(ctype),
        locale=None if locale is None else str(locale),
        icu_rules=None if rules is None else str(rules),
        settings=[str(s) for s in settings],
        comment=None if comment is None else str(comment),
        role_settings={str(r): [str(e) for e in entries] for r, entries in by_role.items()},
    )


def _settable(conn: psycopg.Connection[Any]) -> tuple[dict[str, str], set[str]]:
    """The server's settings (lowercase name -> context), and the superuser-context ones
    this role may set for a database."""
    known = {
        str(n).lower(): str(c) for n, c in conn.execute("SELECT name, context FROM pg_settings")
    }
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    restricted = [n for n, c in known.items() if c in ("superuser", "superuser-backend")]
    if row and row[0]:
        return known, set(restricted)
    if conn.info.server_version < 150_000:  # no SET privileges on parameters before 15
        return known, set()
    allowed = conn.execute(
        "SELECT n FROM unnest(%s::text[]) AS n WHERE has_parameter_privilege(n, 'SET')",
        (restricted,),
    ).fetchall()
    return known, {str(r[0]) for r in allowed}


def _alterable_roles(conn: psycopg.Connection[Any]) -> tuple[set[str], set[str]]:
    """The server's roles, and those whose settings in a database this role may set
    (``ALTER ROLE ... IN DATABASE ... SET``): all for a superuser, else only itself."""
    existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        return existing, existing
    return existing, {str(conn.info.user)} & existing


def _set_database_properties(
    target_dsn: SecretStr, production: Database, name: str, props: DatabaseProperties
) -> None:
    """The source database's own settings and comment on the new database, as pg_dump
    ``--create`` writes them (the locale is set when the database is created)."""
    ident = sql.Identifier(name)
    with _admin(target_dsn, production) as conn:
        for entry in props.settings:
            setting, values = split_setting(entry)
            try:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                        ident,
                        sql.Identifier(setting),
                        sql.SQL(", ").join(sql.Literal(v) for v in values),
                    )
                )
            except psycopg.Error as exc:
                raise DataError(
                    f"the source database's setting {setting} cannot be set on staging "
                    f"(the live database is untouched): {_redact(str(exc).strip(), target_dsn)}"
                ) from None
        for role, entries in sorted(props.role_settings.items()):
            for entry in entries:
                setting, values = split_setting(entry)
                try:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
                            sql.Identifier(role),
                            ident,
                            sql.Identifier(setting),
                            sql.SQL(", ").join(sql.Literal(v) for v in values),
                        )
                    )
                except psycopg.Error as exc:
                    raise _error(
                        f"setting {setting} for role {role} in {name} failed", exc, target_dsn
                    ) from None
        if props.comment is not None:
            try:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        ident, sql.Literal(props.comment)
                    )
                )
            except psycopg.Error as exc:
                raise _error(f"commenting {name} failed", exc, target_dsn) from None


def _copyable_properties(
    admin: psycopg.Connection[Any], database: DatabaseProperties
) -> tuple[DatabaseProperties, list[str]]:
    """The source database's properties with only the settings staging's server knows
    and the sync's role may set; and what was left out, and why."""
    known, settable = _settable(admin)
    kept, settings_left_out = choose_database_settings(database.settings, known, settable)
    # An application role's settings in the database (its search_path, say):
    # copied for the roles staging's server has and the sync's role may alter.
    existing, alterable = _alterable_roles(admin)
    roles_kept: dict[str, list[str]] = {}
    for role, entries in sorted(database.role_settings.items()):
        if role not in alterable:
            reason = "only a superuser may set them on staging"
            if role not in existing:
                reason = "no such role on staging's server"
            settings_left_out.append(f"role {role}'s settings in the database: {reason}")
            continue
        role_kept, role_left_out = choose_database_settings(
            entries, known, settable, what=f"role {role}'s setting"
        )
        settings_left_out += role_left_out
        if role_kept:
            roles_kept[role] = role_kept
    database = database.model_copy(update={"settings": kept, "role_settings": roles_kept})
    return database, settings_left_out
