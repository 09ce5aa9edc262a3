"""Container image references, pinned by digest.

A deploy names each image as ``registry/name@sha256:<64 hex>``. Tags float (the same tag
can mean different bytes tomorrow), so a reference carrying only a tag is refused: what
is tested in staging must be, bit for bit, what is promoted to production.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rsolv_staging.exceptions import ConfigurationError

# name components per the distribution spec: lowercase alnum with . _ __ - separators,
# optional registry host[:port] first.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE = re.compile(
    rf"^(?P<name>{_NAME})(?::(?P<tag>[\w][\w.-]{{0,127}}))?(?:@(?P<digest>sha256:[a-f0-9]{{64}}))?$"
)


@dataclass(frozen=True)
class ImageRef:
    """An image pinned by digest."""

    name: str
    digest: str

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}"

    @property
    def short(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}@{self.digest[:19]}"


def split_reference(reference: str) -> tuple[str, str | None, str | None] | None:
    """``(name, tag, digest)`` of any image reference, pinned or not; None if malformed."""
    match = _REFERENCE.match(reference.strip())
    return (match["name"], match["tag"], match["digest"]) if match else None


def repository(name: str) -> str:
    """The fully qualified repository of an image name, as a container runtime reads it.

    ``postgres`` is ``docker.io/library/postgres``, ``prom/prometheus`` is
    ``docker.io/prom/prometheus``; a first component with a dot or a port, or
    ``localhost``, is a registry host and is kept.
    """
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def parse_image(reference: str, *, field: str = "image") -> ImageRef:
    """Parse ``name@sha256:...`` (a tag beside the digest is dropped: the digest decides).

    Raises:
        ConfigurationError: malformed, or a tag with no digest (floating), naming ``field``.
    """
    match = _REFERENCE.match(reference.strip())
    if not match:
        raise ConfigurationError(
            f"{field}: {reference!r} is not an image reference such as "
            "'ghcr.io/rsolv-dev/rsolv-api@sha256:<64 hex digits>'"
        )
    if not match["digest"]:
        raise ConfigurationError(
            f"{field}: {reference!r} is not pinned by digest; a tag can move, so deploy "
            "'name@sha256:...' (e.g. from `crane digest` or the CI build's output)"
        )
    return ImageRef(name=match["name"], digest=match["digest"])
