"""Where a bundle is published: a registry reference or an OCI image layout on disk.

    host:port/repo[/more]:tag          localhost:5000/digits:1.0
    host:port/repo@sha256:<64 hex>     by digest: exactly that artifact, whatever the tags say
    host:port/repo                     (edgepack ls)
    file://PATH[:tag | @sha256:...]    an OCI image layout folder (file://bundles:tflite-int8)

A registry reference must name its host (with a port, a dot, or `localhost`): edgepack
never falls back to a public registry.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Literal

from ..errors import UsageError

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


@dataclass(frozen=True)
class Ref:
    kind: Literal["registry", "layout"]
    location: str                 # host[:port], or the layout's folder
    repository: str = ""          # registry only
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str | None:
        """What to resolve: the digest when there is one, else the tag."""
        return self.digest or self.tag

    @property
    def repo_text(self) -> str:
        return f"file://{self.location}" if self.kind == "layout" else f"{self.location}/{self.repository}"

    def __str__(self) -> str:
        return self.repo_text + (f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else "")

    def with_tag(self, tag: str) -> Ref:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Ref:
        return replace(self, tag=None, digest=digest)

    @property
    def is_loopback(self) -> bool:
        host = self.location.rsplit(":", 1)[0] if not self.location.startswith("[") else self.location[1:].split("]")[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _split(text: str, rest: str) -> tuple[str, str | None, str | None]:
    """rest -> (path, tag, digest): `@digest` wins; a tag is what follows the last ':' after the last '/'."""
    digest = tag = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        if not DIGEST.fullmatch(digest):
            raise UsageError(f"{text}: {digest!r} is not a digest (sha256:<64 hex digits>)")
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not TAG.fullmatch(tag):
            raise UsageError(f"{text}: {tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")
    return rest, tag, digest


def parse_ref(text: str, *, need: Literal["tag", "tag-or-digest", "repository"]) -> Ref:
    """Parse REF for a command: push needs a tag, pull a tag or digest, ls the repository alone."""
    if text.startswith("file://"):
        path, tag, digest = _split(text, text[len("file://"):])
        if not path:
            raise UsageError(f"{text}: no folder after file://")
        ref = Ref("layout", path, "", tag, digest)
    else:
        if "://" in text:
            raise UsageError(f"{text}: give the registry as host:port/repo:tag (no scheme; TLS is used unless "
                             "--insecure), or file://PATH for a folder")
        if "/" not in text:
            raise UsageError(f"{text}: no registry host (expected host:port/repo:tag, e.g. localhost:5000/digits:1.0, "
                             "or file://PATH for a folder)")
        host, rest = text.split("/", 1)
        if not (":" in host or "." in host or host == "localhost"):
            raise UsageError(f"{text}: {host!r} is not a registry host (give host:port, a dotted name or localhost; "
                             "edgepack never assumes a public registry)")
        repo, tag, digest = _split(text, rest)
        if not REPOSITORY.fullmatch(repo):
            raise UsageError(f"{text}: {repo!r} is not a repository name (lowercase letters, digits, '.', '_', '-', '/')")
        ref = Ref("registry", host, repo, tag, digest)
    if need == "tag" and not ref.tag:
        raise UsageError(f"{text}: give a tag to publish under (REF:tag)" +
                         (", not a digest: the registry computes that" if ref.digest else ""))
    if need == "tag-or-digest" and not ref.reference:
        raise UsageError(f"{text}: give a tag (REF:tag) or a digest (REF@sha256:...)")
    if need == "repository" and ref.reference:
        raise UsageError(f"{text}: list a repository, without a tag or digest ({ref.repo_text})")
    return ref
