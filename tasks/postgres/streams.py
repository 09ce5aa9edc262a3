"""One table's rows, source to staging: two ``psql`` processes joined by a pipe (binary
COPY), or with this thread masking the rows in between (text COPY)."""

from __future__ import annotations

import fcntl
import gc
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from rsolv_staging.exceptions import DataError
from rsolv_staging.sanitize import (
    LineMasker,
    MaskerFactory,
    MaskShape,
    Rules,
)
from tasks.postgres.catalog import _Table, column_clause
from tasks.postgres.connections import _redact
from tasks.postgres.sessions import _with_settings
from tasks.postgres.tools import _Children

# The column order of a masked copy (masked columns first), and its masker.
_Masking = tuple[list[str], LineMasker]


@dataclass(frozen=True)
class _PipeEnds:
    """How the psql processes of a pipe reach each side: conninfo, environment, DSN."""

    source: tuple[str, dict[str, str], SecretStr]
    target: tuple[str, dict[str, str], SecretStr]


# Masked rows are handled in 64 KiB blocks: they stay in the CPU caches (1 MiB blocks
# masked 5-10% slower).
_RELAY_CHUNK = 1 << 16


# psql's command tag of a finished COPY: rows sent (reader) or taken (writer).
_COPY_TAG = re.compile(r"^COPY (\d+)$", re.MULTILINE)


_TAG_LINES = re.compile(r"^(BEGIN|SET|COPY \d+)\n", re.MULTILINE)


def _pipe_table(
    bindir: Path,
    src: psycopg.Connection[Any],
    table: _Table,
    snapshot: str,
    ends: _PipeEnds,
    children: _Children,
    masking: _Masking | None = None,
) -> tuple[int, int]:
    """Copy one table's rows between two psql processes; returns the rows the source
    sent (its ``COPY`` count under the snapshot) and the rows the target took.

    Binary COPY through a pipe from one process to the other: the rows never pass
    through Python. With ``masking`` (column order, masker), text COPY whose rows this
    thread masks block by block before the target receives them.
    """
    reader_command, writer_command = _psql_commands(bindir, src, table, snapshot, ends, masking)
    reader = children.start(
        reader_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ends.source[1]
    )
    try:
        writer = children.start(
            writer_command,
            stdin=subprocess.PIPE if masking is not None else reader.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ends.target[1],
        )
    except BaseException:
        reader.kill()  # not left holding its snapshot on production
        reader.wait()
        children.finished(reader)
        raise
    assert reader.stdout is not None
    _widen(reader.stdout)
    if masking is None:
        reader.stdout.close()  # the writer's now: the reader sees a broken pipe if it dies
    else:
        _relay_masked(reader, writer, masking[1])
    return _copy_counts(reader, writer, children, table, ends)


def _psql_commands(
    bindir: Path,
    src: psycopg.Connection[Any],
    table: _Table,
    snapshot: str,
    ends: _PipeEnds,
    masking: _Masking | None,
) -> tuple[list[str], list[str]]:
    """The command lines of the reading and the writing psql of one table's copy."""
    src_info, dst_info = ends.source[0], ends.target[0]
    fmt = "binary" if masking is None else "text"
    columns = table.column_list
    if masking is not None:
        columns = column_clause(masking[0])
    # COPY of a table (not of a query): a plain scan, and only this table's rows, never
    # an inheritance child's (as SELECT ... FROM ONLY). psql's \copy to pstdout with the
    # command tags sent to stderr (-o): the source's "COPY n" is the reference count of
    # the verification, without scanning production a second time.
    out = sql.SQL("\\copy {}{} to pstdout (format {})").format(table.ident, columns, sql.SQL(fmt))
    into = sql.SQL("COPY {}{} FROM STDIN (FORMAT {}, FREEZE)").format(
        table.ident, columns, sql.SQL(fmt)
    )
    psql = [str(bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1"]
    if masking is not None:
        # Text rows are rendered by one session and parsed by another: same settings.
        same = (
            "DateStyle=ISO,YMD",
            "TimeZone=UTC",
            "IntervalStyle=postgres",
            "extra_float_digits=3",
        )
        src_info, dst_info = _with_settings(src_info, *same), _with_settings(dst_info, *same)
    reader = [
        *psql,
        "-o",
        "/dev/stderr",
        "-c",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "-c",
        f"SET TRANSACTION SNAPSHOT '{snapshot}'",
        "-c",
        out.as_string(src),
        "-d",
        src_info,
    ]
    writer = [
        *psql,
        "-c",
        "SET synchronous_commit = off",
        "-c",
        "BEGIN",
        # FREEZE needs the table emptied in the same transaction; it is empty anyway.
        "-c",
        sql.SQL("TRUNCATE ONLY {}").format(table.ident).as_string(src),
        "-c",
        into.as_string(src),
        "-c",
        "COMMIT",
        "-d",
        dst_info,
    ]
    return reader, writer


def _relay_masked(
    reader: subprocess.Popen[bytes], writer: subprocess.Popen[bytes], masker: LineMasker
) -> None:
    """Mask the reader's rows block by block into the writer's input, then close both."""
    assert reader.stdout is not None
    assert writer.stdin is not None
    _widen(writer.stdin)
    try:
        source_fd = reader.stdout.fileno()
        while block := os.read(source_fd, _RELAY_CHUNK):
            writer.stdin.write(masker.feed(block))
        masker.close()
    except BrokenPipeError:
        pass  # the writer failed; its stderr says why
    except BaseException:
        # Masking failed: closing the writer's input would end its COPY normally and
        # commit the rows so far. Kill both ends first, and reap them.
        for process in (writer, reader):
            process.kill()
        for process in (writer, reader):
            process.wait()
        raise
    finally:
        with suppress(OSError):  # a killed writer: the flush of its input fails
            writer.stdin.close()
        reader.stdout.close()


def _copy_counts(
    reader: subprocess.Popen[bytes],
    writer: subprocess.Popen[bytes],
    children: _Children,
    table: _Table,
    ends: _PipeEnds,
) -> tuple[int, int]:
    """Wait for both psql processes; the rows the reader sent and the writer took."""
    reader_err = reader.stderr.read().decode(errors="replace") if reader.stderr else ""
    assert writer.stdout is not None
    assert writer.stderr is not None
    writer_out, writer_err = writer.stdout.read(), writer.stderr.read()  # a few lines each
    writer.wait()
    reader.wait()
    children.finished(reader, writer)
    if reader.returncode != 0 or writer.returncode != 0:
        detail = (
            # Without the reader's command tags (-o /dev/stderr): only what went wrong.
            _redact(_TAG_LINES.sub("", reader_err).strip(), ends.source[2])
            + " "
            + _redact(writer_err.decode(errors="replace").strip(), ends.target[2])
        )
        raise DataError(f"copying {table.key} failed: {detail.strip()[-2000:]}")
    sent = _COPY_TAG.findall(reader_err)
    took = _COPY_TAG.findall(writer_out.decode())
    if not sent or not took:
        raise DataError(f"copying {table.key}: psql reported no row count")
    return int(sent[-1]), int(took[-1])


# Copies in one process share the freeze: the last to finish unfreezes.
_frozen_lock = threading.Lock()


_frozen_depth = 0


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist now.

    Masking allocates millions of short-lived lists and tuples; some survive long enough
    to trigger full collections, and each full collection walked the whole heap of the
    flow's process (Prefect and its imports: ~170k objects): 0.6-0.9 of 2.6-3.0 CPU-s of
    masking for 2.5M rows, measured. Frozen objects are skipped by collections until
    they are unfrozen; nothing is collected less, only later.
    """
    global _frozen_depth
    with _frozen_lock:
        if _frozen_depth == 0:
            gc.freeze()
        _frozen_depth += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen_depth -= 1
            if _frozen_depth == 0:
                gc.unfreeze()


def _widen(pipe: Any) -> None:
    """Give a pipe 1 MiB instead of 64 KiB: the processes on its two ends wake each
    other less often (psql CPU -0.2 to -0.4 s per 1.4 GB copy, measured)."""
    # Not Linux, or above /proc/sys/fs/pipe-max-size: the default size still works.
    with suppress(AttributeError, OSError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


def _masker_for(
    table: _Table,
    rules: Rules | None,
    factory: MaskerFactory | None,
    shapes: Mapping[str, MaskShape],
) -> _Masking | None:
    """The column order of a masked copy (masked columns first) and its masker; ``None``
    when nothing in ``table`` is masked."""
    if rules is None or factory is None:
        return None
    masked: list[str] = []
    maskers = []
    for column in table.columns:
        # Rules name a partitioned table; its rows are copied partition by partition.
        name = f"{table.root}.{column}"
        rule = rules.columns.get(name)
        if rule is not None and rule.strategy != "keep":
            masked.append(column)
            # The shape of all columns under this rule, not this column's own: a value
            # and its foreign keys must be masked alike.
            shape = shapes.get(name, MaskShape())
            maskers.append(factory.masker(rule, unique=shape.unique, max_length=shape.max_length))
    if not masked:
        return None
    return masked + [c for c in table.columns if c not in masked], LineMasker(maskers)
