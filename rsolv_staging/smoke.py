"""Smoke checks as data: the model of a check, of its result, and the judging of one.

Pure, typed code. The only I/O is :func:`load_checks`, which reads a YAML checks file
(``data/smoke/<environment>.yaml``) and validates it, refusing a bad file with every
offending check and field named. Sending requests is the job of ``tasks/http.py``; it
hands back :class:`Sample` objects and :func:`judge` turns them into a
:class:`CheckResult`, so every rule about what "passed" means lives here and is tested
without a network.

A checks file::

    environment: staging          # the environment the checks are for
    defaults: {timeout_seconds: 10}   # optional, merged into every check
    checks:
      - name: api-health
        url: https://{api_domain}/api/health
        status: 200               # an int, a list of ints, or "any"
        json_equals: {"$.status": ok}
        p95_ms: 1000              # latency budget: p95 over N requests
        tls_min_days: 7           # fail when the certificate expires sooner
        severity: critical        # or warning: reported, never fails the run

URL placeholders are filled from the environment model: ``{domain}``,
``{api_domain}``, ``{grafana_domain}`` and ``{namespace}``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rsolv_staging.environments import Environment, EnvironmentName, Topology
from rsolv_staging.exceptions import ConfigurationError
from rsolv_staging.settings import REPO_ROOT

SMOKE_DIR = REPO_ROOT / "data" / "smoke"

Severity = Literal["critical", "warning"]
# Safe methods only: a smoke check runs against production after every deploy and must
# never change state there, so POST/PUT/DELETE are refused when the file is loaded.
Method = Literal["GET", "HEAD", "OPTIONS"]
JsonValue: TypeAlias = str | int | float | bool | list[Any] | dict[str, Any] | None

# Gateways answer these while a freshly rolled-out pod is not ready yet (k3s' Traefik:
# 502/503 with no endpoints, 504 on a hung upstream); they are worth a warm-up retry.
WARMUP_STATUSES = frozenset({502, 503, 504})

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def default_checks_file(environment: EnvironmentName) -> Path:
    """``data/smoke/<environment>.yaml``."""
    return SMOKE_DIR / f"{environment}.yaml"


# ------------------------------------------------------------------------------ URL


def template_fields(env: Environment) -> dict[str, str]:
    """The values URL placeholders are filled with, from the environment model."""
    return {
        "domain": env.domain,
        "api_domain": env.api_domain,
        "grafana_domain": env.grafana_domain,
        "namespace": env.namespace,
    }


TEMPLATE_FIELDS = ("domain", "api_domain", "grafana_domain", "namespace")


def fill_url(template: str, values: Mapping[str, str]) -> str:
    """``template`` with its ``{placeholders}`` replaced (only plain names are allowed)."""
    out: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if spec or conversion or field not in values:
            raise ValueError(
                f"unknown placeholder {{{field}}}; use "
                + ", ".join(f"{{{name}}}" for name in values)
            )
        out.append(values[field])
    return "".join(out)


def _check_url(template: str) -> str:
    try:
        url = fill_url(template, {name: "example.com" for name in TEMPLATE_FIELDS})
    except ValueError as exc:
        # string.Formatter raises ValueError on a lone "{" or "}", too.
        raise ValueError(f"{template!r}: {exc}") from None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{template!r} is not an http(s) URL with a host")
    return template


# ------------------------------------------------------------------------ JSON path

_SEGMENT = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)      # .name
      | \[(?P<index>-?\d+)\]                     # [0], [-1]
      | \[(?P<q>["'])(?P<key>(?:(?!(?P=q)).)*)(?P=q)\]   # ["key with spaces"]
    """,
    re.VERBOSE,
)

PathPart: TypeAlias = str | int


def parse_json_path(path: str) -> tuple[PathPart, ...]:
    """Parse the subset ``$``, ``.name``, ``[index]`` and ``["key"]``: ``$.a.b[0].c``.

    Raises:
        ValueError: anything else (wildcards, filters, slices, recursive descent), with
            the position of the first character that is not understood.
    """
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    parts: list[PathPart] = []
    pos = 1
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        if match is None:
            raise ValueError(
                f"JSON path {path!r}: cannot parse {path[pos:]!r} at position {pos} "
                '(supported: $.name, [0], ["key"])'
            )
        if match["name"] is not None:
            parts.append(match["name"])
        elif match["index"] is not None:
            parts.append(int(match["index"]))
        else:
            parts.append(match["key"])
        pos = match.end()
    return tuple(parts)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def json_path_get(document: Any, path: str) -> Any:
    """The value at ``path`` in ``document``, or :data:`MISSING` when there is none."""
    node = document
    for part in parse_json_path(path):
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                return MISSING
            node = node[part]
        else:
            if not isinstance(node, dict) or part not in node:
                return MISSING
            node = node[part]
    return node


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``; lists and objects deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


# ---------------------------------------------------------------------------- models


class Check(BaseModel):
    """One smoke check: a URL, what its answer must look like, and how much it matters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Unique slug shown in the report, e.g. 'api-health'")
    description: str = Field(default="", description="What the check proves, for humans")
    url: str = Field(description="URL, with {domain}/{api_domain}/{grafana_domain} allowed")
    method: Method = Field(default="GET", description="HTTP method (safe methods only)")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers")
    status: tuple[int, ...] | None = Field(
        default=(200,),
        description="Acceptable status codes: an int, a list, or 'any' (None) to accept all",
    )
    body_contains: str | None = Field(default=None, description="Substring the body must hold")
    json_equals: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="JSON-path -> expected value, e.g. {'$.status': 'ok'}",
    )
    p95_ms: float | None = Field(
        default=None, gt=0, description="Latency budget: p95 of N requests, milliseconds"
    )
    requests: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Requests to measure p95 over; default: the run's requests_per_check",
    )
    tls_min_days: float | None = Field(
        default=None, ge=0, description="Fail when the certificate expires in fewer days"
    )
    severity: Severity = Field(
        default="critical", description="critical fails the run; warning is only reported"
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="Per request")
    follow_redirects: bool = Field(default=False, description="Follow 3xx redirects")
    verify: bool = Field(
        default=True,
        description="Verify the TLS certificate; false is refused in production files",
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="Extra CA certificates (PEM) to trust, e.g. a test CA; relative to "
        "the checks file",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > 63 or not _NAME.match(value):
            raise ValueError(f"{value!r}: use lowercase letters, digits and '-'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if value == "any" or value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)):
            for code in value:
                if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                    raise ValueError(f"{code!r} is not an HTTP status code (100-599)")
            if not value:
                raise ValueError("give at least one status code, or 'any'")
        return value

    @field_validator("json_equals")
    @classmethod
    def _json_paths(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for path in value:
            parse_json_path(path)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Check:
        if self.method == "HEAD" and (self.body_contains is not None or self.json_equals):
            raise ValueError("a HEAD response has no body: drop body_contains/json_equals")
        if self.tls_min_days is not None and not self.url.startswith("https://"):
            raise ValueError("tls_min_days needs an https:// URL")
        if self.requests is not None and self.requests > 1 and self.p95_ms is None:
            raise ValueError("requests > 1 only makes sense with a p95_ms latency budget")
        return self

    def request_count(self, default: int) -> int:
        """How many requests to send: N for a latency budget, else one is enough."""
        if self.p95_ms is None:
            return 1
        return self.requests or default


class CheckSuite(BaseModel):
    """The checks of one environment, as read from its checks file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: EnvironmentName = Field(description="The environment these checks are for")
    checks: tuple[Check, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _rules(self) -> CheckSuite:
        seen: set[str] = set()
        for check in self.checks:
            if check.name in seen:
                raise ValueError(f"check name {check.name!r} is used twice")
            seen.add(check.name)
            # Production is never checked with verification off: a man in the middle
            # would pass the smoke test. A test CA goes in ca_bundle instead.
            if self.environment == "production" and not check.verify:
                raise ValueError(
                    f"check {check.name!r}: verify: false is not allowed for production; "
                    "trust a private CA with ca_bundle instead"
                )
        return self


_PER_CHECK = frozenset({"name", "url", "description"})


def load_checks(path: Path) -> CheckSuite:
    """Read and validate a checks file.

    Raises:
        ConfigurationError: the file is missing or not YAML, or a check is invalid; the
            message names the file, each offending check and field.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read checks file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"checks file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"checks file {path} must be a mapping with 'checks'")
    return suite_from_mapping(raw, source=str(path), base_dir=path.parent)


def suite_from_mapping(
    raw: Mapping[str, Any], *, source: str = "<checks>", base_dir: Path | None = None
) -> CheckSuite:
    """Validate a checks mapping (the parsed YAML); ``defaults`` are merged into checks.

    Raises:
        ConfigurationError: naming ``source``, each offending check and field.
    """
    data = dict(raw)
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigurationError(f"{source}: defaults must be a mapping")
    # A name or URL shared by every check is a mistake, not a default.
    unknown = sorted(key for key in defaults if key not in Check.model_fields or key in _PER_CHECK)
    if unknown:
        raise ConfigurationError(
            f"{source}: defaults: {', '.join(unknown)} cannot be given as a default"
        )
    checks = data.get("checks")
    if isinstance(checks, list):
        merged = []
        for item in checks:
            if isinstance(item, dict):
                item = {**defaults, **item}
                bundle = item.get("ca_bundle")
                if isinstance(bundle, str) and base_dir is not None:
                    item["ca_bundle"] = str(base_dir / bundle)
            merged.append(item)
        data["checks"] = merged
    try:
        return CheckSuite.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, source, checks)) from None


def _describe(exc: ValidationError, source: str, checks: Any) -> str:
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ""
        if len(loc) >= 2 and loc[0] == "checks" and isinstance(loc[1], int):
            index = loc[1]
            item = checks[index] if isinstance(checks, list) and index < len(checks) else None
            name = item.get("name") if isinstance(item, dict) else None
            where = f"check {name!r} (checks[{index}])" if name else f"checks[{index}]"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        head = ", ".join(part for part in (where, f"field {field}" if field else "") if part)
        lines.append(f"{head}: {message}" if head else message)
    return f"invalid checks file {source}: " + "; ".join(lines)


def render_checks(
    suite: CheckSuite, env: Environment, *, other: Environment | None = None
) -> tuple[Check, ...]:
    """The suite's checks with their URL templates filled from ``env``.

    Raises:
        ConfigurationError: the suite is for another environment than ``env``, or a check
            aims at a host under ``other``'s domain; running production's checks with
            staging's domains (or the reverse) proves nothing, and a staging check that
            tests production would vouch for staging with production's health.
    """
    if suite.environment != env.name:
        raise ConfigurationError(
            f"the checks are for {suite.environment!r}, not {env.name!r}: pass the "
            f"{env.name} checks file"
        )
    values = template_fields(env)
    checks = tuple(c.model_copy(update={"url": fill_url(c.url, values)}) for c in suite.checks)
    if other is not None:
        for check in checks:
            host = (urlsplit(check.url).hostname or "").rstrip(".").lower()
            if _owner(host, env, other) is other:
                raise ConfigurationError(
                    f"check {check.name!r} aims at {host}, under {other.name}'s domain: "
                    f"{env.name}'s smoke tests must test {env.name}"
                )
    return checks


def _owner(host: str, *envs: Environment) -> Environment | None:
    """The environment whose domain ``host`` is under; the more specific domain wins
    (staging's domain may hang off production's, or the reverse)."""
    under = [e for e in envs if host == e.domain or host.endswith("." + e.domain)]
    return max(under, key=lambda e: len(e.domain), default=None)


def checks_for(
    topology: Topology, environment: str, checks_file: str | Path | None = None
) -> tuple[Check, ...]:
    """``environment``'s checks: ``checks_file``, or ``data/smoke/<environment>.yaml``,
    read, validated and filled in (the errors of :func:`load_checks` and
    :func:`render_checks`; a check aimed at the other environment is refused).
    """
    env = topology.environment(environment)
    other = topology.production if env is topology.staging else topology.staging
    path = Path(checks_file) if checks_file else default_checks_file(env.name)
    return render_checks(load_checks(path), env, other=other)


# --------------------------------------------------------------------------- results


class WarmupPolicy(BaseModel):
    """How long to wait for a service that has just rolled out, and how to back off."""

    model_config = ConfigDict(frozen=True)

    budget_seconds: float = Field(
        default=60.0, ge=0, description="Stop retrying a check when this much time is spent"
    )
    initial_delay_seconds: float = Field(default=0.5, gt=0, description="First retry delay")
    max_delay_seconds: float = Field(default=8.0, gt=0, description="Cap of one delay")
    jitter: float = Field(
        default=0.5, ge=0, le=1, description="Each delay is randomly scaled by 1 +/- jitter"
    )

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Delay after failed ``attempt`` (1-based): exponential, capped, jittered.

        Jitter keeps checks (and CI runs) that failed together from retrying in lockstep.
        """
        base = min(self.max_delay_seconds, self.initial_delay_seconds * 2.0 ** (attempt - 1))
        return max(0.0, base * (1 + self.jitter * rng.uniform(-1, 1)))


class Sample(BaseModel):
    """One HTTP exchange, as measured by the HTTP task."""

    status: int
    elapsed_ms: float
    body: bytes = b""


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest value >= ``pct`` percent of values.

    Nearest rank never interpolates, so with few samples p95 is the worst one: a
    budget check on 5 requests is deliberately strict rather than flattering.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {pct}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def days_until(expiry: dt.datetime, now: dt.datetime) -> float:
    """Days from ``now`` to ``expiry`` (negative once expired)."""
    return (expiry - now).total_seconds() / 86400


class CheckResult(BaseModel):
    """What one check found."""

    name: str
    severity: Severity
    url: str
    passed: bool
    status: int | None = Field(default=None, description="Status of the last response")
    attempts: int = Field(default=0, description="Warm-up attempts before an answer")
    latencies_ms: list[float] = Field(default_factory=list)
    p95_ms: float | None = None
    budget_ms: float | None = None
    tls_days_left: float | None = None
    failures: list[str] = Field(default_factory=list, description="Why it failed")
    notes: list[str] = Field(default_factory=list, description="Worth knowing, not failures")
    duration_ms: float = Field(default=0.0, description="Wall time of the whole check")

    @property
    def detail(self) -> str:
        return "; ".join(self.failures + self.notes)

    @property
    def outcome(self) -> Literal["pass", "fail", "warn"]:
        if self.passed:
            return "pass"
        return "fail" if self.severity == "critical" else "warn"


def expectation_failures(check: Check, sample: Sample) -> list[str]:
    """What is wrong with one response, by the check's status/body/JSON expectations."""
    failures = []
    if check.status is not None and sample.status not in check.status:
        want = " or ".join(str(code) for code in check.status)
        failures.append(f"status {sample.status}, expected {want}")
    if check.body_contains is not None or check.json_equals:
        text = sample.body.decode("utf-8", errors="replace")
        if check.body_contains is not None and check.body_contains not in text:
            failures.append(f"body does not contain {check.body_contains!r}")
        if check.json_equals:
            failures += _json_failures(check.json_equals, text)
    return failures


def _json_failures(expected: Mapping[str, JsonValue], text: str) -> list[str]:
    try:
        document = json.loads(text)
    except ValueError:
        snippet = text[:60].replace("\n", " ")
        return [f"body is not JSON ({snippet!r}...), expected {', '.join(expected)}"]
    failures = []
    for path, want in expected.items():
        got = json_path_get(document, path)
        if got is MISSING:
            failures.append(f"{path} missing, expected {json.dumps(want)}")
        elif not json_equal(got, want):
            failures.append(f"{path} is {json.dumps(got)}, expected {json.dumps(want)}")
    return failures


def judge(
    check: Check,
    samples: Sequence[Sample],
    *,
    tls_expiry: dt.datetime | None,
    now: dt.datetime,
    attempts: int = 1,
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
    duration_ms: float = 0.0,
) -> CheckResult:
    """Turn what was measured into a result: every expectation of the check, applied.

    Args:
        check: the check (URL already filled).
        samples: the measured responses, first one after warm-up.
        tls_expiry: the peer certificate's notAfter, if the URL is https and one was seen.
        now: the time TLS days are counted from.
        attempts: warm-up attempts until the first answer.
        errors: failures found while measuring (transport errors, warm-up exhausted).
        notes: facts worth showing that are not failures.
        duration_ms: wall time of the check.
    """
    failures = [*errors, *_distinct_failures(check, samples)]
    latencies = [s.elapsed_ms for s in samples]
    p95 = percentile(latencies, 95) if latencies else None
    if check.p95_ms is not None and p95 is not None and p95 > check.p95_ms:
        failures.append(
            f"p95 {p95:.0f} ms over budget {check.p95_ms:.0f} ms ({len(latencies)} requests)"
        )
    tls_days = days_until(tls_expiry, now) if tls_expiry is not None else None
    failures += _tls_failures(check, tls_days, tls_expiry, failed_already=bool(failures))
    all_notes = list(notes)
    if attempts > 1 and samples:
        all_notes.append(f"answered after {attempts} warm-up attempts")
    return CheckResult(
        name=check.name,
        severity=check.severity,
        url=check.url,
        passed=not failures,
        status=samples[-1].status if samples else None,
        attempts=attempts,
        latencies_ms=[round(x, 3) for x in latencies],
        p95_ms=round(p95, 3) if p95 is not None else None,
        budget_ms=check.p95_ms,
        tls_days_left=round(tls_days, 3) if tls_days is not None else None,
        failures=failures,
        notes=all_notes,
        duration_ms=round(duration_ms, 3),
    )


def _distinct_failures(check: Check, samples: Sequence[Sample]) -> list[str]:
    """The expectation failures of all samples, each distinct problem once."""
    failures: list[str] = []
    seen: set[str] = set()
    for sample in samples:
        for failure in expectation_failures(check, sample):
            # One line per distinct problem, not one per request.
            if failure not in seen:
                seen.add(failure)
                failures.append(failure)
    return failures


def _tls_failures(
    check: Check,
    tls_days: float | None,
    tls_expiry: dt.datetime | None,
    *,
    failed_already: bool,
) -> list[str]:
    """The check's TLS expectation, if it has one: a certificate valid long enough."""
    if check.tls_min_days is None:
        return []
    if tls_days is None:
        # Already failed otherwise (no answer, say): a missing certificate adds nothing.
        return [] if failed_already else ["no TLS certificate seen"]
    if tls_days < check.tls_min_days:
        return [
            f"TLS certificate expires in {tls_days:.1f} days "
            f"(< {check.tls_min_days:g}; notAfter {tls_expiry:%Y-%m-%d %H:%M} UTC)"
        ]
    return []


class SmokeReport(BaseModel):
    """The outcome of a smoke run; returned by the flow so the deploy flow can read it."""

    environment: EnvironmentName
    passed: bool = Field(description="No critical check failed (warnings allowed)")
    results: list[CheckResult]
    critical_failures: list[str] = Field(description="Names of failed critical checks")
    warnings: list[str] = Field(description="Names of failed warning checks")
    duration_seconds: float = Field(description="Wall time of all checks together")

    @classmethod
    def from_results(
        cls, environment: EnvironmentName, results: Sequence[CheckResult], *, duration: float
    ) -> SmokeReport:
        critical = [r.name for r in results if not r.passed and r.severity == "critical"]
        warnings = [r.name for r in results if not r.passed and r.severity == "warning"]
        return cls(
            environment=environment,
            passed=not critical,
            results=list(results),
            critical_failures=critical,
            warnings=warnings,
            duration_seconds=round(duration, 3),
        )

    def summary(self) -> str:
        """One line for logs and the artifact description."""
        total = len(self.results)
        ok = sum(r.passed for r in self.results)
        line = f"{self.environment}: {ok}/{total} checks passed in {self.duration_seconds:.1f} s"
        if self.critical_failures:
            line += f"; CRITICAL failed: {', '.join(self.critical_failures)}"
        if self.warnings:
            line += f"; warnings: {', '.join(self.warnings)}"
        return line

    def table(self) -> list[dict[str, Any]]:
        """One row per check, for a Prefect table artifact."""

        def num(value: float | None, digits: int) -> float | str:
            return round(value, digits) if value is not None else ""

        return [
            {
                "check": r.name,
                "severity": r.severity,
                "passed": r.passed,
                "status": r.status if r.status is not None else "",
                "p95 ms": num(r.p95_ms, 1),
                "budget ms": round(r.budget_ms) if r.budget_ms is not None else "",
                "TLS days left": num(r.tls_days_left, 1),
                "detail": r.detail,
            }
            for r in self.results
        ]


__all__ = [
    "MISSING",
    "SMOKE_DIR",
    "TEMPLATE_FIELDS",
    "WARMUP_STATUSES",
    "Check",
    "CheckResult",
    "CheckSuite",
    "Method",
    "Sample",
    "Severity",
    "SmokeReport",
    "WarmupPolicy",
    "days_until",
    "default_checks_file",
    "expectation_failures",
    "fill_url",
    "json_equal",
    "json_path_get",
    "judge",
    "load_checks",
    "parse_json_path",
    "percentile",
    "render_checks",
    "suite_from_mapping",
    "template_fields",
]
