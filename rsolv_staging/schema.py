"""The RSOLV application schema, as SQLAlchemy 2 declarative models.

Pure, typed code with no I/O. It is the one description of the application's tables
that the synthetic-data generator loads, the monthly production -> staging sync
verifies a restore against, and the tests create on their throwaway servers:

    organizations ─┬─ users
                   ├─ api_keys ──────────────┐ (created_by -> users)
                   ├─ repositories ─ scans ──┴─ findings ─ fix_attempts ─ pull_requests
                   └─ subscriptions ─ payments
    email_subscribers (the landing page's newsletter list, no foreign key)

Constraint names follow :data:`NAMING_CONVENTION`, so a schema reflected from a live
database can be compared name for name with these models (:func:`describe_metadata`
and :func:`compare_schemas`; ``tasks.postgres.describe_schema`` reflects the live side).

Choices worth knowing:

* ids are ``bigint`` identity columns (``BY DEFAULT``), so bulk loads may supply them
  and the application keeps inserting without them; whoever supplies ids must move the
  sequences past them afterwards (``tasks.postgres.loading``).
* every foreign key column has an index: PostgreSQL does not create one, and without it
  each ``ON DELETE CASCADE`` from a parent scans the whole child table.
* ``payments`` refuse the deletion of their subscription (``RESTRICT``): financial
  records must outlive a cancelled customer, so deleting an organization that has paid
  fails loudly instead of silently erasing its invoices.
* states that the application treats as closed sets are ``CHECK`` constraints over
  ``varchar`` (cheap to extend); severity, which is ordered and shared with the API, is a
  real PostgreSQL enum.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.type_api import TypeEngine

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every RSOLV table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        # Every instant is stored with its time zone: the app, the sync and the
        # generator all speak UTC, and a naive timestamp would silently shift.
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
    }


class Severity(enum.Enum):
    """How bad a finding is; ordered from worst to mildest."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


def _one_of(column: str, values: Iterable[str]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def _pk() -> Mapped[int]:
    return mapped_column(BigInteger, Identity(always=False), primary_key=True)


def _fk(target: str, *, ondelete: str, nullable: bool = False) -> Mapped[Any]:
    return mapped_column(
        BigInteger, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True
    )


USER_ROLES = ("owner", "admin", "member")
REPOSITORY_PROVIDERS = ("github", "gitlab", "bitbucket")
SCAN_STATUSES = ("queued", "running", "completed", "failed")
FINDING_STATUSES = ("open", "fixed", "ignored", "false_positive")
FIX_STATUSES = ("pending", "running", "succeeded", "failed")
PULL_REQUEST_STATES = ("open", "merged", "closed")
PLANS = ("trial", "team", "business", "enterprise")
SUBSCRIPTION_STATUSES = ("trialing", "active", "past_due", "canceled")
PAYMENT_STATUSES = ("succeeded", "failed", "refunded")
SUBSCRIBER_SOURCES = ("landing", "blog", "webinar", "referral")
SUBSCRIBER_STATUSES = ("pending", "confirmed", "unsubscribed")


class Organization(Base):
    """A customer account; everything but the newsletter list hangs off one."""

    __tablename__ = "organizations"

    id: Mapped[int] = _pk()
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    billing_email: Mapped[str] = mapped_column(String(320))
    billing_address: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str] = mapped_column(CHAR(2))
    created_at: Mapped[datetime]


class User(Base):
    """A person who signs in; belongs to exactly one organization."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_one_of("role", USER_ROLES), name="role"),
        CheckConstraint("last_login_at >= created_at", name="login_after_creation"),
    )

    id: Mapped[int] = _pk()
    organization_id: Mapped[int] = _fk("organizations.id", ondelete="CASCADE")
    email: Mapped[str] = mapped_column(String(320), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class ApiKey(Base):
    """A credential the RSOLV action uses; only its SHA-256 is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("last_used_at >= created_at", name="used_after_creation"),
        CheckConstraint("revoked_at >= created_at", name="revoked_after_creation"),
    )

    id: Mapped[int] = _pk()
    organization_id: Mapped[int] = _fk("organizations.id", ondelete="CASCADE")
    # The key survives the person who made it: SET NULL, not CASCADE.
    created_by_id: Mapped[int | None] = _fk("users.id", ondelete="SET NULL", nullable=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(CHAR(8))
    key_hash: Mapped[str] = mapped_column(CHAR(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Repository(Base):
    """A source repository an organization has connected."""

    __tablename__ = "repositories"
    __table_args__ = (
        UniqueConstraint("organization_id", "full_name"),
        CheckConstraint(_one_of("provider", REPOSITORY_PROVIDERS), name="provider"),
    )

    id: Mapped[int] = _pk()
    # The unique (organization_id, full_name) index already serves this column.
    organization_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    provider: Mapped[str] = mapped_column(String(16))
    full_name: Mapped[str] = mapped_column(String(255))
    default_branch: Mapped[str] = mapped_column(String(100))
    language: Mapped[str | None] = mapped_column(String(40))
    is_private: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]


class Scan(Base):
    """One security scan of one commit."""

    __tablename__ = "scans"
    __table_args__ = (
        CheckConstraint(_one_of("status", SCAN_STATUSES), name="status"),
        CheckConstraint("finished_at >= started_at", name="finished_after_start"),
    )

    id: Mapped[int] = _pk()
    repository_id: Mapped[int] = _fk("repositories.id", ondelete="CASCADE")
    api_key_id: Mapped[int | None] = _fk("api_keys.id", ondelete="SET NULL", nullable=True)
    commit_sha: Mapped[str] = mapped_column(CHAR(40))
    branch: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Finding(Base):
    """A vulnerability a scan reported."""

    __tablename__ = "findings"
    __table_args__ = (
        CheckConstraint(_one_of("status", FINDING_STATUSES), name="status"),
        CheckConstraint("line >= 1", name="line_positive"),
    )

    id: Mapped[int] = _pk()
    scan_id: Mapped[int] = _fk("scans.id", ondelete="CASCADE")
    rule_id: Mapped[str] = mapped_column(String(100))
    severity: Mapped[Severity] = mapped_column(
        Enum(Severity, name="severity", values_callable=lambda e: [m.value for m in e])
    )
    title: Mapped[str] = mapped_column(String(200))
    file_path: Mapped[str] = mapped_column(String(500))
    line: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    # Scanner output varies by rule (CWE, OWASP category, snippet, location...).
    details: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class FixAttempt(Base):
    """RSOLV's attempt to fix one finding automatically."""

    __tablename__ = "fix_attempts"
    __table_args__ = (
        CheckConstraint(_one_of("status", FIX_STATUSES), name="status"),
        CheckConstraint("completed_at >= started_at", name="completed_after_start"),
    )

    id: Mapped[int] = _pk()
    finding_id: Mapped[int] = _fk("findings.id", ondelete="CASCADE")
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(60))
    started_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class PullRequest(Base):
    """The pull request a successful fix attempt opened."""

    __tablename__ = "pull_requests"
    __table_args__ = (
        UniqueConstraint("repository_id", "number"),
        CheckConstraint(_one_of("state", PULL_REQUEST_STATES), name="state"),
        CheckConstraint("number >= 1", name="number_positive"),
        CheckConstraint("merged_at >= opened_at", name="merged_after_open"),
        CheckConstraint("closed_at >= opened_at", name="closed_after_open"),
    )

    id: Mapped[int] = _pk()
    repository_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("repositories.id", ondelete="CASCADE")
    )
    # One pull request per attempt; the unique constraint's index serves the FK.
    fix_attempt_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("fix_attempts.id", ondelete="CASCADE"), unique=True
    )
    number: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(300))
    url: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime]
    merged_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class Subscription(Base):
    """An organization's plan with the payment provider."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(_one_of("plan", PLANS), name="plan"),
        CheckConstraint(_one_of("status", SUBSCRIPTION_STATUSES), name="status"),
        CheckConstraint("seats >= 1", name="seats_positive"),
        CheckConstraint("price_cents >= 0", name="price_not_negative"),
        CheckConstraint("canceled_at >= started_at", name="canceled_after_start"),
    )

    id: Mapped[int] = _pk()
    organization_id: Mapped[int] = _fk("organizations.id", ondelete="CASCADE")
    plan: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    seats: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(CHAR(3))
    provider_subscription_id: Mapped[str] = mapped_column(String(64), unique=True)
    started_at: Mapped[datetime]
    current_period_end: Mapped[datetime]
    canceled_at: Mapped[datetime | None]


class Payment(Base):
    """A charge against a subscription."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(_one_of("status", PAYMENT_STATUSES), name="status"),
        CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
    )

    id: Mapped[int] = _pk()
    subscription_id: Mapped[int] = _fk("subscriptions.id", ondelete="RESTRICT")
    amount_cents: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(CHAR(3))
    status: Mapped[str] = mapped_column(String(16))
    provider_payment_id: Mapped[str] = mapped_column(String(64), unique=True)
    paid_at: Mapped[datetime]


class EmailSubscriber(Base):
    """A newsletter subscriber from the landing page (ConvertKit's list)."""

    __tablename__ = "email_subscribers"
    __table_args__ = (
        CheckConstraint(_one_of("source", SUBSCRIBER_SOURCES), name="source"),
        CheckConstraint(_one_of("status", SUBSCRIBER_STATUSES), name="status"),
        CheckConstraint("confirmed_at >= subscribed_at", name="confirmed_after_subscribed"),
        CheckConstraint("unsubscribed_at >= subscribed_at", name="left_after_subscribed"),
    )

    id: Mapped[int] = _pk()
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    subscribed_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]


metadata: MetaData = Base.metadata

# Parents before children: the order in which tables are created, generated and loaded
# (and the reverse of the order in which they can be emptied without CASCADE).
TABLE_NAMES: tuple[str, ...] = (
    "organizations",
    "users",
    "api_keys",
    "repositories",
    "scans",
    "findings",
    "fix_attempts",
    "pull_requests",
    "subscriptions",
    "payments",
    "email_subscribers",
)


def column_names(table: str) -> tuple[str, ...]:
    """The columns of ``table`` in their declared (and physical) order."""
    return tuple(column.name for column in metadata.tables[table].columns)


def required_parents(table: str) -> tuple[str, ...]:
    """Tables ``table`` cannot have rows without: the targets of its NOT NULL foreign keys."""
    parents = {
        fk.column.table.name for fk in metadata.tables[table].foreign_keys if not fk.parent.nullable
    }
    return tuple(name for name in TABLE_NAMES if name in parents)


# --- schema descriptions, for comparing a live database with these models ----------


@dataclass(frozen=True)
class ForeignKeyShape:
    """A foreign key as both SQLAlchemy's metadata and PostgreSQL's catalog know it."""

    name: str
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]
    ondelete: str


@dataclass(frozen=True)
class TableShape:
    """What the application relies on in one table: columns, keys and constraints."""

    columns: tuple[tuple[str, str, bool], ...]
    """(name, type as PostgreSQL spells it, nullable), in physical order."""
    primary_key: tuple[str, ...]
    uniques: frozenset[tuple[str, ...]]
    foreign_keys: frozenset[ForeignKeyShape]
    checks: frozenset[str]
    """Check constraint names (their text is normalized differently by each side)."""
    indexes: frozenset[tuple[str, tuple[str, ...], bool]] = field(default=frozenset())
    """(name, columns, unique) of the indexes that are not constraints."""


@dataclass(frozen=True)
class SchemaShape:
    """A whole schema: its tables and its enum types."""

    tables: Mapping[str, TableShape]
    enums: Mapping[str, tuple[str, ...]]


_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def type_name(type_: TypeEngine[Any]) -> str:
    """``type_`` as PostgreSQL DDL spells it (``VARCHAR(320)``, ``TIMESTAMP WITH TIME ZONE``)."""
    return str(type_.compile(dialect=_DIALECT))


def normalize_ondelete(value: str | None) -> str:
    """``None`` and ``NO ACTION`` are the same rule; spell rules in upper case."""
    return (value or "NO ACTION").upper()


def describe_metadata(meta: MetaData | None = None) -> SchemaShape:
    """The shape these models (or ``meta``) give a freshly created database."""
    meta = meta if meta is not None else metadata
    tables: dict[str, TableShape] = {}
    enums: dict[str, tuple[str, ...]] = {}
    for table in meta.sorted_tables:
        uniques: set[tuple[str, ...]] = set()
        checks: set[str] = set()
        for constraint in table.constraints:
            if isinstance(constraint, UniqueConstraint):
                uniques.add(tuple(c.name for c in constraint.columns))
            elif isinstance(constraint, CheckConstraint):
                checks.add(str(constraint.name))
        for column in table.columns:
            if column.unique:
                uniques.add((column.name,))
            if isinstance(column.type, Enum) and column.type.name:
                enums[column.type.name] = tuple(column.type.enums)
        foreign_keys = {
            ForeignKeyShape(
                name=str(fk.name),
                columns=tuple(c.name for c in fk.columns),
                referred_table=fk.referred_table.name,
                referred_columns=tuple(e.column.name for e in fk.elements),
                ondelete=normalize_ondelete(fk.ondelete),
            )
            for fk in table.foreign_key_constraints
        }
        indexes = {
            (str(ix.name), tuple(c.name for c in ix.columns), bool(ix.unique))
            for ix in table.indexes
        }
        tables[table.name] = TableShape(
            columns=tuple((c.name, type_name(c.type), bool(c.nullable)) for c in table.columns),
            primary_key=tuple(c.name for c in table.primary_key.columns),
            uniques=frozenset(uniques),
            foreign_keys=frozenset(foreign_keys),
            checks=frozenset(checks),
            indexes=frozenset(indexes),
        )
    return SchemaShape(tables=tables, enums=enums)


def compare_schemas(expected: SchemaShape, actual: SchemaShape) -> list[str]:
    """Every way ``actual`` differs from ``expected``, one sentence each; [] when equal.

    Only the tables and enums of ``expected`` are compared: a live database may hold
    more (the application's migration bookkeeping, for instance) without that being
    drift.
    """
    problems: list[str] = []
    for name, labels in expected.enums.items():
        found = actual.enums.get(name)
        if found is None:
            problems.append(f"enum {name}: missing")
        elif tuple(found) != tuple(labels):
            problems.append(f"enum {name}: labels {list(found)}, expected {list(labels)}")
    for name, want in expected.tables.items():
        have = actual.tables.get(name)
        if have is None:
            problems.append(f"table {name}: missing")
            continue
        problems.extend(_compare_table(name, want, have))
    return problems


def _compare_table(name: str, want: TableShape, have: TableShape) -> list[str]:
    problems: list[str] = []
    want_columns = {c[0]: c for c in want.columns}
    have_columns = {c[0]: c for c in have.columns}
    for column in want_columns.keys() - have_columns.keys():
        problems.append(f"table {name}: column {column} missing")
    for column in have_columns.keys() - want_columns.keys():
        problems.append(f"table {name}: unexpected column {column}")
    for column in want_columns.keys() & have_columns.keys():
        _, want_type, want_null = want_columns[column]
        _, have_type, have_null = have_columns[column]
        if want_type != have_type:
            problems.append(f"table {name}: column {column} is {have_type}, expected {want_type}")
        if want_null != have_null:
            expected = "NULL" if want_null else "NOT NULL"
            problems.append(f"table {name}: column {column} should be {expected}")
    if [c[0] for c in want.columns] != [c[0] for c in have.columns] and not problems:
        # COPY without a column list, and pg_dump's data sections, depend on the order.
        problems.append(f"table {name}: columns in a different order")
    if want.primary_key != have.primary_key:
        problems.append(
            f"table {name}: primary key {list(have.primary_key)}, expected {list(want.primary_key)}"
        )
    for cols in sorted(want.uniques - have.uniques):
        problems.append(f"table {name}: unique ({', '.join(cols)}) missing")
    for cols in sorted(have.uniques - want.uniques):
        problems.append(f"table {name}: unexpected unique ({', '.join(cols)})")
    for fk in sorted(want.foreign_keys - have.foreign_keys, key=lambda f: f.name):
        problems.append(
            f"table {name}: foreign key {fk.name} ({', '.join(fk.columns)}) -> "
            f"{fk.referred_table} ON DELETE {fk.ondelete} missing or different"
        )
    for fk in sorted(have.foreign_keys - want.foreign_keys, key=lambda f: f.name):
        problems.append(f"table {name}: unexpected foreign key {fk.name}")
    for check in sorted(want.checks - have.checks):
        problems.append(f"table {name}: check constraint {check} missing")
    for index in sorted(want.indexes - have.indexes):
        problems.append(f"table {name}: index {index[0]} missing or different")
    return problems


__all__ = [
    "NAMING_CONVENTION",
    "TABLE_NAMES",
    "ApiKey",
    "Base",
    "EmailSubscriber",
    "Finding",
    "FixAttempt",
    "ForeignKeyShape",
    "Organization",
    "Payment",
    "PullRequest",
    "Repository",
    "Scan",
    "SchemaShape",
    "Severity",
    "Subscription",
    "TableShape",
    "User",
    "column_names",
    "compare_schemas",
    "describe_metadata",
    "metadata",
    "normalize_ondelete",
    "required_parents",
    "type_name",
]
