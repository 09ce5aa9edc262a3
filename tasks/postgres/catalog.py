"""What the sync reads from a database's catalogs: its tables (with what a COPY of each
takes), post-data objects, sequences, materialized views, object counts, and a table's
checksum. The same queries describe the source before the copy and the new database
in verification."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.postgres.sessions import _USER_NAMESPACES, _not_extension_member


class _Relation(BaseModel):
    """A table or sequence of the source, and the columns a COPY of it takes."""

    schema_name: str
    name: str
    columns: list[str]

    @property
    def key(self) -> str:
        return f"{self.schema_name}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema_name, self.name)

    @property
    def column_list(self) -> sql.Composable:
        """`` (a, b)`` for a COPY, or nothing for a table without columns (whose rows
        COPY still carries, and where ``()`` is a syntax error)."""
        return column_clause(self.columns)


def column_clause(columns: list[str]) -> sql.Composable:
    """`` (a, b)``: a COPY's column list with its leading space, empty for no columns."""
    if not columns:
        return sql.SQL("")
    return sql.SQL(" ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))


class _Table(_Relation):
    bytes: int
    root: str = Field(description="The partitioned table a partition belongs to, or itself")
    unique_columns: list[str]
    max_lengths: dict[str, int]
    own_autovacuum: bool = Field(
        default=False, description="The source sets autovacuum_enabled on it (or its TOAST)"
    )


_TABLES = f"""
SELECT n.nspname, c.relname, pg_table_size(c.oid),
       (SELECT rn.nspname || '.' || r.relname FROM pg_class r
        JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE r.oid = coalesce(pg_partition_root(c.oid), c.oid)),
       array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attgenerated = ''),
       array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE EXISTS (
           SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique
             AND a.attnum = ANY(i.indkey))),
       json_object_agg(a.attname, a.atttypmod - 4) FILTER (WHERE a.atttypmod > 4
           AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype)),
       concat_ws(',', array_to_string(c.reloptions, ','),
                 (SELECT array_to_string(t.reloptions, ',') FROM pg_class t
                  WHERE t.oid = c.reltoastrelid)) ~ '(^|,)autovacuum_enabled='
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
-- LEFT: a table with no columns (CREATE TABLE t (), or all dropped) still holds rows.
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind = 'r' AND {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
GROUP BY n.nspname, c.relname, c.oid
ORDER BY pg_table_size(c.oid) DESC, 1, 2
"""


# Indexes and constraints of the source: owner, estimated build cost (size on the
# source by access method), and for foreign keys the referenced table and the key
# (constraint, or a bare unique index) they point at.
_POST_DATA_OBJECTS = """
WITH rel AS (
  SELECT c.oid, n.nspname || '.' || c.relname AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
)
SELECT i.indexrelid::bigint, t.name, pg_relation_size(i.indexrelid), am.amname,
       NULL::text, NULL::bigint
FROM pg_index i JOIN rel t ON t.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
UNION ALL
SELECT k.oid::bigint, t.name,
       CASE WHEN k.contype = 'f' THEN pg_table_size(k.conrelid)
            ELSE coalesce(pg_relation_size(nullif(k.conindid, 0)), 0) END,
       coalesce(am.amname, ''), r.name,
       CASE WHEN k.contype = 'f' THEN coalesce(
         (SELECT u.oid FROM pg_constraint u WHERE u.conindid = k.conindid
            AND u.conrelid = k.confrelid AND u.contype IN ('p', 'u')),
         k.conindid)::bigint END
FROM pg_constraint k JOIN rel t ON t.oid = k.conrelid
LEFT JOIN rel r ON r.oid = k.confrelid
LEFT JOIN pg_class ic ON ic.oid = k.conindid AND k.contype <> 'f'
LEFT JOIN pg_am am ON am.oid = ic.relam
"""


_SEQUENCES = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
ORDER BY 1, 2
"""


_MATVIEWS = f"""
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND c.relispopulated AND {_USER_NAMESPACES}
ORDER BY c.oid
"""


# Object counts by kind in the user's schemas. NOT NULL constraints are left out: from
# PostgreSQL 18 they are catalogued as constraints, before they were not.
_OBJECTS = f"""
SELECT kind, count(*) FROM (
  SELECT CASE c.relkind WHEN 'r' THEN 'tables' WHEN 'p' THEN 'partitioned tables'
    WHEN 'v' THEN 'views' WHEN 'm' THEN 'materialized views' WHEN 'S' THEN 'sequences'
    WHEN 'i' THEN 'indexes' WHEN 'I' THEN 'partitioned indexes' WHEN 'f' THEN 'foreign tables'
    WHEN 'c' THEN 'composite types' ELSE 'relkind ' || c.relkind::text END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {_USER_NAMESPACES} AND {_not_extension_member("pg_class", "c.oid")}
  UNION ALL
  SELECT 'constraints ' || k.contype::text FROM pg_constraint k
  JOIN pg_namespace n ON n.oid = k.connamespace
  WHERE k.contype <> 'n' AND {_USER_NAMESPACES}
  UNION ALL
  SELECT CASE p.prokind WHEN 'f' THEN 'functions' WHEN 'p' THEN 'procedures'
    WHEN 'a' THEN 'aggregates' ELSE 'window functions' END
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE {_USER_NAMESPACES} AND {_not_extension_member("pg_proc", "p.oid")}
  UNION ALL
  SELECT 'triggers' FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND {_USER_NAMESPACES}
  UNION ALL
  SELECT CASE t.typtype WHEN 'e' THEN 'enums' WHEN 'd' THEN 'domains' WHEN 'r' THEN 'range types'
    ELSE 'base types' END
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('e', 'd', 'r', 'b') AND t.typelem = 0 AND {_USER_NAMESPACES}
    AND {_not_extension_member("pg_type", "t.oid")}
  UNION ALL
  SELECT 'extensions' FROM pg_extension WHERE extname <> 'plpgsql'
  UNION ALL
  SELECT 'schemas' FROM pg_namespace n WHERE {_USER_NAMESPACES}
    AND {_not_extension_member("pg_namespace", "n.oid")}
  UNION ALL
  SELECT 'large objects' FROM pg_largeobject_metadata
  UNION ALL
  SELECT 'policies' FROM pg_policy
  UNION ALL
  SELECT 'rules' FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE r.rulename <> '_RETURN' AND {_USER_NAMESPACES}
  UNION ALL
  SELECT 'comments' FROM pg_description d WHERE d.objoid >= 16384
    AND d.classoid <> 'pg_database'::regclass
) AS objects(kind) GROUP BY kind
"""


def read_objects(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Object counts by kind (tables, indexes, constraints by type, functions, ...)."""
    return {str(kind): int(n) for kind, n in conn.execute(_OBJECTS)}


def read_sequences(conn: psycopg.Connection[Any]) -> dict[str, tuple[int | None, bool]]:
    """Each sequence's (last_value, is_called)."""
    values: dict[str, tuple[int | None, bool]] = {}
    for schema, name in conn.execute(_SEQUENCES).fetchall():
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        assert row is not None
        values[f"{schema}.{name}"] = (int(row[0]), bool(row[1]))
    return values


def table_checksum(conn: psycopg.Connection[Any], schema: str, name: str) -> str:
    """An order-independent checksum of a table's rows (count + sum of row hashes)."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {} t"
        ).format(sql.Identifier(schema, name))
    ).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"
