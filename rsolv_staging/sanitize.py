"""Sanitization rules and the maskers that apply them to a COPY text stream (pure).

A rules file (``data/sanitize-rules.yaml``) maps ``[schema.]table.column`` to a
strategy:

* ``fake: <provider>``: a Faker provider's value (``email``, ``name``, ``phone_number``,
  ``address``, ...) chosen deterministically by HMAC-SHA256(salt, value);
* ``hash``: the hex HMAC-SHA256(salt, value);
* ``null``; ``fixed: <value>``; ``keep``.

The same input gives the same output in every table and column that uses the same
strategy, so foreign keys and joins on masked values still match. Columns under a
unique index get a 64-bit keyed suffix, so distinct inputs stay distinct (a collision
needs ~4 billion distinct values to become likely). Values are masked in the stream
between the source and the new database: an unmasked value never reaches staging.
"""

from __future__ import annotations

import hashlib
import re
from binascii import hexlify
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from faker import Faker
from pydantic import BaseModel, Field

from rsolv_staging.exceptions import ConfigurationError

Strategy = Literal["fake", "hash", "null", "fixed", "keep"]
POOL_SIZE = 1024  # a power of two
_PERSONAL = re.compile(
    r"e_?mail|phone|mobile|(^|_)(first|last|full|user|display|given|family)?_?name$|"
    r"address|street|city|postal|zip|token|secret|password|ssn|birth",
    re.IGNORECASE,
)
_TEXT_TYPES = {"text", "character varying", "character", "citext", "varchar", "bpchar"}


class Rule(BaseModel):
    """How one column is masked."""

    strategy: Strategy
    provider: str | None = Field(default=None, description="Faker provider for 'fake'")
    value: str | None = Field(default=None, description="The value for 'fixed'")


class Rules(BaseModel):
    """A parsed rules file: ``schema.table.column`` -> rule."""

    columns: dict[str, Rule]


def _qualify(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 2:
        parts = ["public", *parts]
    if len(parts) != 3 or not all(parts):
        raise ConfigurationError(f"sanitize rule {name!r}: write it as [schema.]table.column")
    return ".".join(parts)


def parse_rules(raw: Any) -> Rules:
    """Validate a rules document: ``{columns: {"table.column": "hash" | {fake: email}}}``.

    Raises:
        ConfigurationError: a malformed rule or an unknown Faker provider.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("columns"), Mapping):
        raise ConfigurationError("sanitize rules: expected a mapping with a 'columns' mapping")
    columns: dict[str, Rule] = {}
    probe = Faker()
    for name, spec in raw["columns"].items():
        key = _qualify(str(name))
        if isinstance(spec, str) and spec in ("hash", "null", "keep"):
            rule = Rule(strategy=spec)
        elif isinstance(spec, Mapping) and len(spec) == 1 and "fake" in spec:
            provider = str(spec["fake"])
            if provider.startswith("_") or not callable(getattr(probe, provider, None)):
                raise ConfigurationError(f"sanitize rule {name!r}: no Faker provider {provider!r}")
            rule = Rule(strategy="fake", provider=provider)
        elif isinstance(spec, Mapping) and len(spec) == 1 and "fixed" in spec:
            rule = Rule(
                strategy="fixed", value=None if spec["fixed"] is None else str(spec["fixed"])
            )
        else:
            raise ConfigurationError(
                f"sanitize rule {name!r}: {spec!r} is not one of hash, null, keep, "
                "{fake: <provider>}, {fixed: <value>}"
            )
        columns[key] = rule
    return Rules(columns=columns)


def check_rules(
    rules: Rules,
    columns: Mapping[str, tuple[str, bool]],
) -> list[str]:
    """Problems of ``rules`` against the source's columns, before anything is copied.

    Args:
        rules: The parsed rules.
        columns: ``schema.table.column`` -> (type name, NOT NULL) of every copied column.
    """
    problems = []
    for name, rule in sorted(rules.columns.items()):
        if name not in columns:
            problems.append(f"{name}: no such column in the source")
            continue
        type_name, not_null = columns[name]
        if rule.strategy in ("fake", "hash") and type_name not in _TEXT_TYPES:
            problems.append(f"{name}: {rule.strategy} needs a text column, not {type_name}")
        if not_null and (
            rule.strategy == "null" or (rule.strategy == "fixed" and rule.value is None)
        ):
            problems.append(f"{name}: cannot be null (NOT NULL)")
    return problems


def personal_columns(columns: Iterable[str], rules: Rules | None) -> list[str]:
    """Columns whose name looks like personal data and that have no rule."""
    ruled = set(rules.columns) if rules else set()
    return sorted(c for c in columns if c not in ruled and _PERSONAL.search(c.rsplit(".", 1)[-1]))


# --- maskers over COPY text fields -------------------------------------------------

_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
NULL = b"\\N"


def escape(value: str) -> bytes:
    """``value`` as a COPY text field."""
    return value.translate(_ESCAPES).encode()


Masker = Callable[[bytes], bytes]


class MaskerFactory:
    """Builds the masker of each rule; value pools are built once per provider.

    Keyed BLAKE2b (a MAC with the salt as key) picks the fake and makes the unique
    suffix: about 10x faster than ``hmac.new`` per value, which matters at millions of
    rows; pool values are escaped and encoded once; the keyed state is copied per value
    (keying costs a compression). Columns with the same rule share one masker.
    """

    def __init__(self, salt: bytes) -> None:
        if not salt:
            raise ConfigurationError("sanitization needs a non-empty salt")
        self._key = hashlib.blake2b(salt, digest_size=32).digest()
        self._pools: dict[str, list[str]] = {}
        self._maskers: dict[tuple[str, str | None, str | None, bool, int | None], Masker] = {}

    def _digest(self, raw: bytes, namespace: str) -> bytes:
        return hashlib.blake2b(
            raw, key=self._key, person=namespace.encode()[:16], digest_size=32
        ).digest()

    def _pool(self, provider: str) -> list[str]:
        if provider not in self._pools:
            fake = Faker()
            seed = int.from_bytes(self._digest(provider.encode(), "pool")[:8], "big")
            fake.seed_instance(seed)
            generate = getattr(fake, provider)
            self._pools[provider] = [str(generate()).replace("\n", ", ") for _ in range(POOL_SIZE)]
        return self._pools[provider]

    def masker(self, rule: Rule, *, unique: bool, max_length: int | None) -> Masker:
        """The masker of ``rule`` for a column (NULL stays NULL except for ``fixed``)."""
        spec = (rule.strategy, rule.provider, rule.value, unique, max_length)
        if spec not in self._maskers:
            self._maskers[spec] = self._build(rule, unique=unique, max_length=max_length)
        return self._maskers[spec]

    def _build(self, rule: Rule, *, unique: bool, max_length: int | None) -> Masker:
        if rule.strategy == "keep":
            return lambda raw: raw
        if rule.strategy == "null":
            return lambda raw: NULL
        if rule.strategy == "fixed":
            fixed = NULL if rule.value is None else escape(rule.value)
            return lambda raw: fixed
        limit = max_length or 10**6
        mask = POOL_SIZE - 1  # a power of two: 16 bits of MAC pick a pool value evenly
        if rule.strategy == "hash":
            width = min(64, limit)
            keyed = hashlib.blake2b(key=self._key, person=b"hash", digest_size=32)

            def hashed(raw: bytes) -> bytes:
                if raw == NULL:
                    return raw
                mac = keyed.copy()
                mac.update(raw)
                return mac.hexdigest()[:width].encode()

            return hashed
        provider = rule.provider or "word"
        person = ("fake:" + provider).encode()[:16]
        if not unique:
            pool = [escape(v[:limit]) for v in self._pool(provider)]
            keyed4 = hashlib.blake2b(key=self._key, person=person, digest_size=4)

            def fake(raw: bytes) -> bytes:
                if raw == NULL:
                    return raw
                mac = keyed4.copy()
                mac.update(raw)
                digest = mac.digest()
                return pool[(digest[2] << 8 | digest[3]) & mask]

            return fake
        # Unique: a 64-bit keyed tag keeps distinct inputs distinct.
        parts: list[tuple[bytes, bytes]] = []
        for value in self._pool(provider):
            if provider == "email" and "@" in value:
                local, domain = value.split("@", 1)
                parts.append((escape(local) + b".", escape("@" + domain)))
            else:
                parts.append((escape(value) + b" ", b""))
        keyed12 = hashlib.blake2b(key=self._key, person=person, digest_size=12)
        longest = max(len(head) + len(tail) for head, tail in parts) + 16

        def fake_unique(raw: bytes) -> bytes:
            if raw == NULL:
                return raw
            mac = keyed12.copy()
            mac.update(raw)
            digest = mac.digest()
            head, tail = parts[(digest[2] << 8 | digest[3]) & mask]
            tag = hexlify(digest[4:])
            if longest <= limit:
                return head + tag + tail
            # A length limit: shorten the pool value, never the tag that keeps it unique.
            suffix = head[-1:] + tag + tail
            return head[:-1][: max(1, limit - len(suffix))] + suffix

        return fake_unique


class LineMasker:
    """Masks the first fields of COPY text rows; feed it chunks, get whole rows back.

    The masked columns come first in the row (the COPY statements list them first), so
    a row is split at its first few tabs only.
    """

    def __init__(self, maskers: Sequence[Masker]) -> None:
        self._maskers = list(enumerate(maskers))
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The masked rows completed by ``chunk`` (a partial last row is kept)."""
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        if not cut:
            return b""
        maskers, count = self._maskers, len(self._maskers)
        out = []
        for line in data[: cut - 1].split(b"\n"):
            fields = line.split(b"\t", count)
            for index, mask in maskers:
                fields[index] = mask(fields[index])
            out.append(b"\t".join(fields))
        out.append(b"")
        return b"\n".join(out)

    def close(self) -> bytes:
        """The end of the stream: a partial row left over is an error."""
        if self._pending:
            raise ValueError("the COPY stream ended in the middle of a row")
        return b""
