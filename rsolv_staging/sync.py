"""The production -> staging sync as pure decisions: names, tool versions, post-data plan,
verification. No I/O here; the modules of ``tasks/postgres/`` do the work
(``plan``, ``pipeline``, ``scheduler``, ``verify``, ``swap``, ...).

The copy method (measured in ``benchmarks/sync_staging_data.py``):

1. one source session, ``REPEATABLE READ READ ONLY`` on a ``default_transaction_read_only``
   connection, exports its snapshot; every other source session (``pg_dump --snapshot``,
   the COPY streams, the row counts) imports it, so the copy is one consistent point in
   time and nothing is ever written on production;
2. ``pg_dump --schema-only`` (custom format, uncompressed: it is small) and
   ``pg_restore --section=pre-data`` into a fresh database beside the live one, created
   with the source database's encoding and locale (:class:`DatabaseProperties`);
   sequences set to the snapshot's values;
3. ``jobs`` parallel streams, each a binary ``COPY ... TO STDOUT`` in one ``psql``
   piped straight into ``TRUNCATE; COPY ... FROM STDIN (FORMAT binary, FREEZE)`` in
   another: the rows never pass through Python (relaying them row by row through
   psycopg was 2.7x slower). The table behind the longest load-then-build
   chain loads first (a GIN index is the critical path of a 1 GB copy). With
   sanitization the masked tables stream as text, masked columns first, and this
   process masks whole blocks of rows between the two;
4. *while the other tables still load*, one scheduler (:class:`PostDataQueue`) starts
   each loaded table's indexes and keys (one ``pg_restore -L`` per costly index,
   cheap ones batched), the costliest chain first and never two that would wait on
   each other's table locks; a foreign key once both its tables are built; ``ANALYZE``
   once a table's foreign keys are in. Autovacuum is paused on the new tables until
   then (it would visit each table as its rows commit and hold locks the builds wait
   for). Index builds run at ``maintenance_work_mem`` 16MB: 20-30% faster than 64MB
   on the measuring machine (the sort stays in the CPU caches);
5. large objects (``lo_get`` -> ``lo_from_bytea``, OIDs kept); the rest of post-data
   (triggers, partitioned indexes, rules, policies) with ``pg_restore -j``; materialized
   views refreshed and analyzed; last, the source database's own settings and comment;
6. verification against facts read from the source under the same snapshot, then the
   swap by renames in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from rsolv_staging.exceptions import ConfigurationError

# PostgreSQL's identifier limit is 63 bytes; the suffixes must fit after the live name.
NEW_SUFFIX = "_sync_new"
OLD_SUFFIX = "_sync_old"
GONE_SUFFIX = "_sync_gone"
MAX_IDENTIFIER = 63
# The key of the large objects among the checksums and the masked items.
LARGE_OBJECTS = "large objects"


@dataclass(frozen=True)
class SyncNames:
    """The databases of one staging server that a sync touches."""

    live: str
    new: str
    old: str
    gone: str


def sync_names(live: str) -> SyncNames:
    """The sync's database names beside ``live``.

    Raises:
        ConfigurationError: the live name is empty or too long for the suffixes.
    """
    longest = max(len(s) for s in (NEW_SUFFIX, OLD_SUFFIX, GONE_SUFFIX))
    if not live or len(live.encode()) + longest > MAX_IDENTIFIER:
        raise ConfigurationError(
            f"staging database name {live!r} must be 1-{MAX_IDENTIFIER - longest} bytes "
            "long so that the sync's side databases fit PostgreSQL's 63-byte names"
        )
    return SyncNames(
        live=live, new=live + NEW_SUFFIX, old=live + OLD_SUFFIX, gone=live + GONE_SUFFIX
    )


# --- client tools ----------------------------------------------------------------


def major_of(version_num: int) -> int:
    """The major version of ``server_version_num`` (150014 -> 15, 180006 -> 18)."""
    return version_num // 10_000


# Timeouts every supported server knows, sent in the startup packet (they override the
# role's and database's own) so that not even the first statement runs under a limit
# meant for the application: a role's 1 ms statement_timeout otherwise cancels the very
# SET that lifts it (reported as "canceling statement due to user request", a race).
STARTUP_SETTINGS = (
    "statement_timeout=0",
    "lock_timeout=0",
    "idle_in_transaction_session_timeout=0",
)


def session_settings(version_num: int) -> tuple[str, ...]:
    """``name=value`` settings of every sync session on a server of ``version_num``
    (``row_security=off``, no timeouts, and a check that the client is still there).

    No timeout of the server's, the database's or the role's may cut a long copy short
    (``pg_dump`` and ``pg_restore`` set the same): production databases often carry a
    ``statement_timeout`` meant for the application, and the snapshot's session sits
    idle in its transaction for the whole copy.
    """
    settings = [
        *STARTUP_SETTINGS,
        # As pg_dump: a query that row-level security would filter fails instead of
        # returning fewer rows (a no-op for roles that bypass it).
        "row_security=off",
    ]
    if version_num >= 140_000:
        # A backend notices a client that died (a killed worker, with its psql and
        # pg_restore) only when it next talks to it: an index build would run on to its
        # end. With the socket checked every second it ends soon after (0.1 s for a
        # one-statement session, measured; up to 11 s for psql's several -c).
        settings.append("client_connection_check_interval=1000")
    if version_num >= 170_000:
        settings.append("transaction_timeout=0")
    return tuple(settings)


def parse_tool_version(output: str) -> int:
    """The major version in ``pg_dump --version`` output (``pg_dump (PostgreSQL) 18.6``)."""
    match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", output)
    if not match:
        raise ConfigurationError(f"cannot read a PostgreSQL version from {output.strip()!r}")
    return int(match.group(1))


def choose_tools(source_major: int, target_major: int, available: Mapping[int, str]) -> str:
    """The bin directory whose pg_dump can read the source and whose output the target
    accepts: a major version between the source's and the target's, the target's own
    preferred (a newer pg_dump can emit settings an older server rejects).

    Args:
        source_major: The source server's major version.
        target_major: The target server's major version.
        available: Major version -> bin directory holding pg_dump and pg_restore.

    Raises:
        ConfigurationError: no such tools, naming the versions that would do.
    """
    found = ", ".join(f"{v} ({d})" for v, d in sorted(available.items())) or "none"
    if target_major < source_major:
        raise ConfigurationError(
            f"the source is PostgreSQL {source_major} and the target {target_major}: "
            f"a dump cannot be restored into an older server; staging needs PostgreSQL "
            f">= {source_major}. Client tools found: {found}"
        )
    usable = [v for v in available if source_major <= v <= target_major]
    if not usable:
        raise ConfigurationError(
            f"no PostgreSQL client tools for a {source_major} -> {target_major} copy: "
            f"need pg_dump/pg_restore of a major version from {source_major} to "
            f"{target_major} (install them or set RSOLV_PG_BINDIR). Found: {found}"
        )
    return available[max(usable)]


# --- the post-data plan ------------------------------------------------------------


@dataclass(frozen=True)
class TocEntry:
    """One line of ``pg_restore -l``: ``dumpId; tableoid oid DESC schema tag owner``."""

    line: str
    dump_id: int
    oid: int
    desc: str
    position: int = 0  # in the listing: pg_dump's dependency order, which -L follows


_TOC_LINE = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")
# Object kinds whose TOC entry belongs to one table (found by the object's oid).
_PER_TABLE_KINDS = ("INDEX", "CONSTRAINT")


def parse_toc(listing: str) -> list[TocEntry]:
    """The entries of a ``pg_restore -l`` listing (comments and blanks skipped)."""
    entries: list[TocEntry] = []
    for raw in listing.splitlines():
        match = _TOC_LINE.match(raw.strip())
        if not match:
            continue
        rest = match.group(4)
        desc = rest.split(" ", 1)[0]
        for multi in ("FK CONSTRAINT", "INDEX ATTACH", "MATERIALIZED VIEW DATA", "USER MAPPING"):
            if rest.startswith(multi + " "):
                desc = multi
        entries.append(
            TocEntry(
                line=raw,
                dump_id=int(match.group(1)),
                oid=int(match.group(3)),
                desc=desc,
                position=len(entries),
            )
        )
    return entries


@dataclass(frozen=True)
class PostDataObject:
    """What the source's catalog says about an index or constraint of the post-data
    section: whose it is, and how costly it is to build."""

    table: str
    cost: float = 0.0
    references: str | None = None  # a foreign key: the referenced table
    requires: int | None = None  # a foreign key: the oid of the key it points at


# Building a GIN/GiST/SP-GiST index costs several times a B-tree of the same size
# (measured: a 117 MB jsonb GIN 8 s, a 54 MB bigint B-tree 0.8 s, a 17 MB two-column text
# B-tree 2.3 s). The estimate only orders the work: the costliest first.
INDEX_COST_WEIGHT = {"gin": 5.0, "gist": 5.0, "spgist": 5.0}


def index_cost(nbytes: int, access_method: str) -> float:
    """Estimated build cost of an index of ``nbytes`` on the source (a relative unit)."""
    return nbytes * INDEX_COST_WEIGHT.get(access_method, 1.0)


@dataclass
class PostDataPlan:
    """Post-data entries split into per-table groups (built as soon as the table is
    loaded), foreign keys between loaded tables (added once both tables are built) and
    the rest (restored once everything is loaded)."""

    per_table: dict[str, list[TocEntry]] = field(default_factory=dict)
    foreign_keys: list[tuple[TocEntry, frozenset[str]]] = field(default_factory=list)
    rest: list[TocEntry] = field(default_factory=list)
    cost: dict[int, float] = field(default_factory=dict)  # dump id -> estimate


def plan_post_data(
    entries: Iterable[TocEntry],
    objects: Mapping[int, PostDataObject],
    loaded_tables: Iterable[str],
) -> PostDataPlan:
    """Split post-data entries.

    Args:
        entries: The post-data section's TOC entries.
        objects: Source oid of an index or constraint -> what it belongs to.
        loaded_tables: Tables whose rows the COPY streams load (leaf tables only).
    """
    entries = list(entries)
    tables = set(loaded_tables)
    plan = PostDataPlan()
    early: set[int] = set()
    for entry in entries:
        info = objects.get(entry.oid)
        if entry.desc in _PER_TABLE_KINDS and info is not None and info.table in tables:
            plan.per_table.setdefault(info.table, []).append(entry)
            plan.cost[entry.dump_id] = info.cost
            early.add(entry.oid)
    for entry in entries:
        info = objects.get(entry.oid)
        if entry.oid in early:
            continue
        if (
            entry.desc == "FK CONSTRAINT"
            and info is not None
            and info.table in tables
            and info.references in tables
            # the key it points at is built early too (not, say, a partitioned index)
            and info.requires in early
        ):
            assert info.references is not None
            plan.foreign_keys.append((entry, frozenset({info.table, info.references})))
        else:
            plan.rest.append(entry)
    return plan


def load_order(table_bytes: Mapping[str, int], plan: PostDataPlan) -> list[str]:
    """Tables in the order to load them: the longest load-then-build chain first.

    A table's chain is its load (its size) followed by its costliest index: starting
    the table behind the costliest index early lets that build run beside the other
    loads instead of after them (the GIN index of a 1 GB copy is its critical path).
    """

    def chain(table: str) -> float:
        builds = [plan.cost.get(e.dump_id, 0.0) for e in plan.per_table.get(table, [])]
        return table_bytes[table] + max(builds, default=0.0)

    return sorted(table_bytes, key=lambda t: (-chain(t), t))


def next_load(pending: Sequence[str], masked: Collection[str], *, masking: bool) -> int:
    """Index in ``pending`` (in :func:`load_order`) of the table to load next.

    Masking runs in Python, one thread at a time (the GIL): while a masked table loads
    (``masking``), a second masked one beside it would slow both, and the first is often
    on the critical path (its indexes wait for it). The first unmasked table goes next
    then; the order is kept otherwise.
    """
    if masking:
        for index, table in enumerate(pending):
            if table not in masked:
                return index
    return 0


@dataclass(frozen=True)
class PostDataJob:
    """One unit of post-data work: TOC entries for one ``pg_restore``, or an ``ANALYZE``."""

    entries: tuple[TocEntry, ...] = ()
    analyze: str | None = None
    # (table, exclusive): the table locks it takes, as far as they conflict.
    locks: frozenset[tuple[str, bool]] = frozenset()


class PostDataQueue:
    """Which post-data work may start, as tables finish loading (bookkeeping only).

    A loaded table's indexes and keys are ready at once; a foreign key once both its
    tables are built (it validates against the referenced key); ``ANALYZE`` of a table
    once its indexes and foreign keys are in (expression indexes have statistics too).
    Work whose table locks would conflict with running work is held back instead of
    blocking a slot: ``ADD PRIMARY KEY``/``UNIQUE`` take an ACCESS EXCLUSIVE lock, a
    foreign key SHARE ROW EXCLUSIVE on both tables, ``ANALYZE`` SHARE UPDATE EXCLUSIVE,
    ``CREATE INDEX`` only SHARE (index builds of one table run side by side).
    Among what may start, the longest chain first: a table's key constraints before its
    costliest index (they cannot overlap it), then the costliest index.
    """

    def __init__(self, plan: PostDataPlan) -> None:
        self._cost = plan.cost
        self._waiting = {t: list(es) for t, es in plan.per_table.items()}
        self._open = {t: len(es) for t, es in plan.per_table.items()}
        self._table_of = {e.dump_id: t for t, es in plan.per_table.items() for e in es}
        self._fks = list(plan.foreign_keys)
        self._fk_tables = {e.dump_id: between for e, between in plan.foreign_keys}
        self._fk_open: dict[str, int] = {}
        for _, between in self._fks:
            for table in between:
                self._fk_open[table] = self._fk_open.get(table, 0) + 1
        self._ready: list[TocEntry] = []
        self._analyzable: list[str] = []
        self._analyzed: set[str] = set()
        self._built: set[str] = set()
        self._held: dict[str, int] = {}  # table -> running jobs holding a shared lock
        self._held_exclusive: set[str] = set()

    def loaded(self, table: str) -> None:
        """``table``'s rows are in: its own indexes and keys may be built."""
        self._ready.extend(self._waiting.pop(table, []))
        if not self._open.get(table):
            self._table_built(table)

    def _locks(self, entry: TocEntry) -> frozenset[tuple[str, bool]]:
        if entry.dump_id in self._fk_tables:
            return frozenset((t, True) for t in self._fk_tables[entry.dump_id])
        return frozenset({(self._table_of[entry.dump_id], entry.desc != "INDEX")})

    def _free(self, locks: Iterable[tuple[str, bool]]) -> bool:
        return all(
            table not in self._held_exclusive and not (exclusive and self._held.get(table))
            for table, exclusive in locks
        )

    def _priority(self, entry: TocEntry) -> float:
        cost = self._cost.get(entry.dump_id, 0.0)
        table = self._table_of.get(entry.dump_id)
        if table is not None and entry.desc != "INDEX":
            # The table's other builds wait for this one: it heads their chain.
            cost += max(
                (
                    self._cost.get(e.dump_id, 0.0)
                    for e in self._ready
                    if e is not entry and self._table_of.get(e.dump_id) == table
                ),
                default=0.0,
            )
        return cost

    def next_job(self, small: float, limit: int = 64) -> PostDataJob | None:
        """Work that may start now, or ``None``.

        An ``ANALYZE`` first (cheap, and it frees nothing else); else the ready entry
        with the longest chain; if it is cheaper than ``small``, with up to ``limit``
        more cheap ones (a process per tiny index would cost more than the index).
        """
        for table in self._analyzable:
            lock = (table, True)
            if self._free([lock]):
                self._analyzable.remove(table)
                return self._start(PostDataJob(analyze=table, locks=frozenset({lock})))
        order = sorted(self._ready, key=lambda e: (-self._priority(e), e.dump_id))
        first = next((e for e in order if self._free(self._locks(e))), None)
        if first is None:
            return None
        batch, locks = [first], set(self._locks(first))
        if self._cost.get(first.dump_id, 0.0) < small:
            for entry in order:
                if len(batch) > limit:
                    break
                if entry is first or self._cost.get(entry.dump_id, 0.0) >= small:
                    continue
                more = self._locks(entry)
                if self._free(more):
                    batch.append(entry)
                    locks |= more
        for entry in batch:
            self._ready.remove(entry)
        return self._start(PostDataJob(entries=tuple(batch), locks=frozenset(locks)))

    def _start(self, job: PostDataJob) -> PostDataJob:
        for table, exclusive in job.locks:
            if exclusive:
                self._held_exclusive.add(table)
            else:
                self._held[table] = self._held.get(table, 0) + 1
        return job

    def finished(self, job: PostDataJob) -> None:
        """``job`` is done: release its locks, and what waited on it may become ready."""
        for table, exclusive in job.locks:
            if exclusive:
                self._held_exclusive.discard(table)
            else:
                self._held[table] -= 1
                if not self._held[table]:
                    del self._held[table]
        for entry in job.entries:
            between = self._fk_tables.get(entry.dump_id)
            if between is not None:
                for table in between:
                    self._fk_open[table] -= 1
                    self._maybe_analyzable(table)
                continue
            table = self._table_of[entry.dump_id]
            self._open[table] -= 1
            if self._open[table] == 0:
                self._table_built(table)

    @property
    def done(self) -> bool:
        """Nothing is waiting, ready or running (``loaded`` may still add work)."""
        return not (self._ready or self._analyzable or self._held or self._held_exclusive)

    def _table_built(self, table: str) -> None:
        self._built.add(table)
        remaining = []
        for entry, between in self._fks:
            if between <= self._built:
                self._ready.append(entry)
            else:
                remaining.append((entry, between))
        self._fks = remaining
        self._maybe_analyzable(table)

    def _maybe_analyzable(self, table: str) -> None:
        if table in self._built and not self._fk_open.get(table) and table not in self._analyzed:
            self._analyzed.add(table)
            self._analyzable.append(table)


def references_first(references: Mapping[str, Collection[str]]) -> list[str]:
    """Tables in an order that loads each after the tables it references (among these);
    a cycle is broken in name order (its keys must then be deferrable anyway)."""
    order: list[str] = []
    left = dict(sorted(references.items()))
    while left:
        ready = [t for t, refs in left.items() if not (set(refs) & left.keys() - {t})]
        for table in ready or [next(iter(left))]:
            order.append(table)
            del left[table]
    return order


def toc_list(entries: Iterable[TocEntry]) -> str:
    """A ``pg_restore -L`` list file of ``entries``, in the listing's order: ``-L``
    restores in the file's order, and dump ids are not in dependency order."""
    return "\n".join(e.line for e in sorted(entries, key=lambda e: e.position)) + "\n"


# --- verification -----------------------------------------------------------------


class DatabaseProperties(BaseModel):
    """What a database carries outside its schema: ``pg_dump`` writes it only with
    ``--create``, so the sync reads it from ``pg_database`` and sets it itself."""

    encoding: str
    locale_provider: str = Field(default="libc", description="libc, icu or builtin")
    collate: str
    ctype: str
    locale: str | None = Field(default=None, description="The ICU or builtin locale")
    icu_rules: str | None = None
    settings: list[str] = Field(
        default_factory=list,
        description="ALTER DATABASE ... SET, as pg_db_role_setting keeps them (name=value)",
    )
    comment: str | None = None
    role_settings: dict[str, list[str]] = Field(
        default_factory=dict,
        description="ALTER ROLE ... IN DATABASE ... SET, by role (an application role's "
        "search_path, say)",
    )


def database_properties_query(version_num: int) -> str:
    """The query of :class:`DatabaseProperties` for the current database on a server of
    ``version_num`` (the locale columns changed in 15, 16 and 17)."""
    provider = "'libc'"
    if version_num >= 150_000:
        provider = (
            "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END"
        )
    locale = "NULL::text"
    if version_num >= 170_000:
        locale = "d.datlocale"
    elif version_num >= 150_000:
        locale = "d.daticulocale"
    rules = "d.daticurules" if version_num >= 160_000 else "NULL::text"
    return f"""
SELECT pg_encoding_to_char(d.encoding), {provider}, d.datcollate, d.datctype, {locale}, {rules},
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setdatabase = d.oid AND s.setrole = 0), '{{}}'),
       shobj_description(d.oid, 'pg_database'),
       coalesce((SELECT json_object_agg(r.rolname, s.setconfig) FROM pg_db_role_setting s
                 JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid), '{{}}')
FROM pg_database d WHERE d.datname = coalesce(%s, current_database())
"""


# A setting named like this holds a credential (PostgREST's app.settings.jwt_secret):
# staging has its own secrets (RFC 002), so it is left out and reported.
_SECRET_SETTING = re.compile(
    r"secret|passw|passphrase|token|credential|dsn|conninfo|url|(^|[._])key($|[._])", re.I
)


def choose_database_settings(
    settings: Sequence[str],
    known: Mapping[str, str],
    settable: Collection[str],
    what: str = "database setting",
) -> tuple[list[str], list[str]]:
    """The source database's settings staging's server takes, and what is left out, why.

    Args:
        settings: ``name=value`` entries of the source database.
        known: staging's ``pg_settings``: lowercase name -> context.
        settable: lowercase names of superuser-context settings the sync's role may set.
        what: How the report names a setting (``database setting``, ``role r's setting``).
    """
    kept: list[str] = []
    left_out: list[str] = []
    for entry in settings:
        name = entry.split("=", 1)[0]
        lower = name.lower()
        if _SECRET_SETTING.search(name):
            left_out.append(f"{what} {name}: looks like a credential (staging has its own)")
        elif "." not in name and lower not in known:
            # An extension's setting (with a dot) is kept: it may not be loaded yet.
            left_out.append(f"{what} {name}: staging's server does not know it")
        elif known.get(lower) in ("superuser", "superuser-backend") and lower not in settable:
            left_out.append(f"{what} {name}: only a superuser may set it on staging")
        else:
            kept.append(entry)
    return kept, left_out


def create_database_options(props: DatabaseProperties, version_num: int) -> list[tuple[str, str]]:
    """``CREATE DATABASE`` options (keyword, value) giving a server of ``version_num`` a
    database with the encoding and locale of ``props``.

    Raises:
        ConfigurationError: the server's version cannot have that locale provider.
    """
    options = [
        ("ENCODING", props.encoding),
        ("LC_COLLATE", props.collate),
        ("LC_CTYPE", props.ctype),
    ]
    needs = {"icu": 150_000, "builtin": 170_000}.get(props.locale_provider, 0)
    if props.icu_rules:
        needs = max(needs, 160_000)
    if version_num < needs:
        raise ConfigurationError(
            f"the source database uses the {props.locale_provider} locale provider"
            + (" with ICU rules" if props.icu_rules else "")
            + f", which staging's PostgreSQL {version_num // 10_000} does not have; "
            f"it needs PostgreSQL {needs // 10_000} or later"
        )
    if version_num >= 150_000:
        options.append(("LOCALE_PROVIDER", props.locale_provider))
    if props.locale_provider == "icu" and props.locale:
        options.append(("ICU_LOCALE", props.locale))
    if props.locale_provider == "builtin" and props.locale:
        options.append(("BUILTIN_LOCALE", props.locale))
    if props.icu_rules:
        options.append(("ICU_RULES", props.icu_rules))
    return options


# Settings whose value is a list of quoted names (PostgreSQL's GUC_LIST_QUOTE; pg_dump
# keeps the same list): stored flattened, they must be set again item by item.
_LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def split_setting(entry: str) -> tuple[str, list[str]]:
    """A ``pg_db_role_setting`` entry as (name, values for ``SET name TO v1, v2``).

    ``search_path="$user", public`` -> (search_path, ["$user", "public"]): setting the
    flattened text as one value would make it a single schema named ``"$user", public``.
    """
    name, sep, value = entry.partition("=")
    if not sep or not name:
        raise ConfigurationError(f"database setting {entry!r}: expected name=value")
    if name.lower() not in _LIST_SETTINGS:
        return name, [value]
    items: list[str] = []
    rest = value.strip()
    while True:
        if rest.startswith('"'):
            match = re.match(r'"((?:[^"]|"")*)"\s*', rest)
            if match is None:
                raise ConfigurationError(f"database setting {entry!r}: unbalanced quotes")
            items.append(match.group(1).replace('""', '"'))
            rest = rest[match.end() :]
        else:
            item, comma, tail = rest.partition(",")
            items.append(item.strip())
            rest = comma + tail
        if not rest:
            return name, items
        if not rest.startswith(","):
            raise ConfigurationError(f"database setting {entry!r}: expected a comma")
        rest = rest[1:].strip()


class SourceFacts(BaseModel):
    """What the source held at the snapshot: the reference a copy is verified against."""

    rows: dict[str, int] = Field(description="Rows per table (schema.table)")
    sequences: dict[str, tuple[int | None, bool]] = Field(
        description="Sequence -> (last_value, is_called)"
    )
    objects: dict[str, int] = Field(description="Object counts by kind")
    checksums: dict[str, str] = Field(default_factory=dict, description="Per-table checksum")
    bytes: int = Field(description="Size of the copied tables on the source")
    database: DatabaseProperties | None = Field(
        default=None, description="Encoding, locale, settings and comment of the database"
    )


class Verification(BaseModel):
    """The result of comparing the new database with the source facts."""

    tables: int
    rows: int
    sequences: int
    objects: dict[str, int]
    checksummed: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_facts(
    expected: SourceFacts,
    *,
    rows: Mapping[str, int],
    sequences: Mapping[str, tuple[int | None, bool]],
    objects: Mapping[str, int],
    checksums: Mapping[str, str],
    masked_tables: Iterable[str] = (),
    database: DatabaseProperties | None = None,
) -> Verification:
    """Every difference between the source and the copy, in words.

    Checksums of masked tables differ on purpose and are not compared.
    """
    problems: list[str] = []
    if expected.database is not None:
        want_db = expected.database.model_dump()
        got_db = database.model_dump() if database is not None else {}
        for prop, want_value in want_db.items():
            got_value = got_db.get(prop)
            if got_value == want_value:
                continue
            # Names only for settings: a value may be something that should not be logged.
            if prop == "settings":
                differ = sorted(
                    {e.split("=", 1)[0] for e in set(want_value) ^ set(got_value or [])}
                )
                problems.append(f"database settings differ: {', '.join(differ)}")
            elif prop == "role_settings":
                got_roles = got_value or {}
                roles = sorted(
                    r
                    for r in want_value.keys() | got_roles.keys()
                    if sorted(want_value.get(r, [])) != sorted(got_roles.get(r, []))
                )
                problems.append(f"settings in the database differ for roles: {', '.join(roles)}")
            else:
                problems.append(
                    f"database {prop}: {want_value!r} in the source, {got_value!r} in the copy"
                )
    for name in sorted(expected.rows.keys() | rows.keys()):
        want, got = expected.rows.get(name), rows.get(name)
        if want != got:
            problems.append(f"table {name}: {want} rows in the source, {got} in the copy")
    for name in sorted(expected.sequences.keys() | sequences.keys()):
        want_seq, got_seq = expected.sequences.get(name), sequences.get(name)
        if want_seq != got_seq:
            problems.append(f"sequence {name}: {want_seq} in the source, {got_seq} in the copy")
    for kind in sorted(expected.objects.keys() | objects.keys()):
        want_n, got_n = expected.objects.get(kind, 0), objects.get(kind, 0)
        if want_n != got_n:
            problems.append(f"{kind}: {want_n} in the source, {got_n} in the copy")
    masked = set(masked_tables)
    compared = 0
    for name, digest in sorted(expected.checksums.items()):
        if name in masked:
            continue
        compared += 1
        if checksums.get(name) != digest:
            what = name if name == LARGE_OBJECTS else f"table {name}"
            problems.append(f"{what}: content checksum differs")
    return Verification(
        tables=len(rows),
        rows=sum(rows.values()),
        sequences=len(sequences),
        objects=dict(objects),
        checksummed=compared,
        problems=problems,
    )


# --- the report ------------------------------------------------------------------


class Phase(BaseModel):
    """One timed phase of a sync."""

    name: str
    seconds: float
    bytes: int = 0

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 and self.bytes else 0.0


class CopyResult(BaseModel):
    """What the copy into the new database did (no DSN, no data)."""

    source: str
    target: str
    tools: str = Field(description="The pg_dump/pg_restore directory used, with its version")
    source_version: int
    target_version: int
    facts: SourceFacts
    phases: list[Phase]
    masked: dict[str, str] = Field(
        default_factory=dict, description="schema.table.column -> strategy"
    )
    unmasked_personal: list[str] = Field(
        default_factory=list, description="Columns that look personal and have no rule"
    )
    left_out: list[str] = Field(
        default_factory=list, description="What the source has and the copy leaves out, why"
    )


class StagingDisk(BaseModel):
    """Staging's databases by size after a sync, in bytes (those the sync's role may
    connect to: all of them for a superuser)."""

    live: int
    rollback: int | None
    total: int
    peak: int = Field(description="All of them while the copy ran: the new copy included")


class SyncReport(BaseModel):
    """The flow's return value and the body of its report artifact."""

    source: str
    target: str
    database: str
    copy_result: CopyResult
    verification: Verification
    phases: list[Phase]
    seconds: float
    rollback_database: str | None
    disk: StagingDisk | None = None


def report_markdown(report: SyncReport) -> str:
    """The run's report artifact."""
    copy = report.copy_result
    lines = [
        f"# Staging data sync: {report.source} -> {report.target}",
        "",
        f"Database **{report.database}** replaced in {report.seconds:.1f} s "
        f"(PostgreSQL {copy.source_version} -> {copy.target_version}, tools {copy.tools}). "
        f"Rollback copy: `{report.rollback_database or 'none'}`.",
        "",
        "| phase | seconds | MB | MB/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for phase in report.phases:
        lines.append(
            f"| {phase.name} | {phase.seconds:.2f} | {phase.bytes / 1e6:.1f} | "
            f"{phase.mb_per_second:.1f} |"
        )
    v = report.verification
    lines += [
        "",
        f"## Verification: {'passed' if v.ok else 'FAILED'}",
        "",
        f"{v.tables} tables, {v.rows} rows, {v.sequences} sequences, "
        f"{v.checksummed} tables checksummed.",
        "",
        "| kind | count |",
        "| --- | ---: |",
        *(f"| {kind} | {n} |" for kind, n in sorted(v.objects.items())),
        "",
        "| table | rows |",
        "| --- | ---: |",
        *(f"| {t} | {n} |" for t, n in sorted(copy.facts.rows.items())),
    ]
    if report.disk is not None:
        disk = report.disk
        rollback = (
            f"rollback copy `{report.rollback_database}` {disk.rollback / 1e6:,.0f} MB; "
            if report.rollback_database and disk.rollback is not None
            else ""
        )
        lines += [
            "",
            "## Staging's disk",
            "",
            f"Live `{report.database}` {disk.live / 1e6:,.0f} MB; {rollback}all of staging's "
            f"databases {disk.total / 1e6:,.0f} MB. While this run copied they took up to "
            f"{disk.peak / 1e6:,.0f} MB (the rollback copy, the live one and the new one): "
            "staging's volume needs that much, and room for production's growth.",
        ]
    lines += ["", "## Sanitization", ""]
    if copy.masked:
        lines += ["| column | strategy |", "| --- | --- |"]
        lines += [f"| {c} | {s} |" for c, s in sorted(copy.masked.items())]
    else:
        lines.append("Off: a direct copy (RFC 002).")
    if copy.unmasked_personal:
        lines += [
            "",
            "Columns that look like personal data and have **no rule**: "
            + ", ".join(f"`{c}`" for c in copy.unmasked_personal),
        ]
    lines += [
        "",
        "## Not copied",
        "",
        "- ownership and grants (staging has its own roles); subscriptions",
        *(f"- {item}" for item in copy.left_out),
    ]
    return "\n".join(lines) + "\n"
