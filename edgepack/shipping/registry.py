"""An OCI registry, through oras-py (the OCI Registry As Storage Python SDK).

Credentials, never from argv and never printed: $EDGEPACK_REGISTRY_USERNAME and
$EDGEPACK_REGISTRY_PASSWORD, else the docker config file ($DOCKER_CONFIG/config.json or
~/.docker/config.json, as `docker login` writes it; oras-py reads it). TLS always, verified
against the system's CAs or --ca-cert; --insecure (plain HTTP) only for a registry on
loopback.

Quirks of oras-py 0.2.43, worked around here:
- `Registry.do_request` is wrapped in a retry decorator that retries any failure five times
  with sleeps of 3 to 83 s (about two minutes for a registry that is down, or for a wrong
  password). The undecorated method is used: one try, then a clear error.
- Its "basic" auth backend answers every 401 with credentials it may not have (an
  AttributeError when none are set); the one here says so instead. Its "token" backend
  expects a token server, which an htpasswd-protected distribution registry does not have.
- It reads only ~/.docker/config.json, not $DOCKER_CONFIG; that file is passed explicitly.
- `get_manifest` returns parsed JSON; the digest is computed here from the bytes the
  registry sent (and compared with the one asked for when pulling by digest).
- requests has no default timeout; the session here has one (a registry that hangs fails).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RegistryUnreachable, UsageError
from .artifact import ARTIFACT_TYPE, Artifact, manifest_bytes
from .refs import Ref

USER_ENV, PASSWORD_ENV = "EDGEPACK_REGISTRY_USERNAME", "EDGEPACK_REGISTRY_PASSWORD"
TIMEOUT = (10, 120)           # seconds: connect, read
ACCEPT = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")


def _docker_configs() -> list[str]:
    folder = os.environ.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else None
    return [str(path)] if path and path.is_file() else []


def _reason(e: BaseException) -> str:
    """The useful part of a requests error ('[Errno 111] Connection refused'), not its pool repr."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+|\[SSL[^\]]*\][^'\")]*|certificate verify failed[^'\")]*|"
                  r"Read timed out|timed out", text)
    return re.sub(r"\s*\(_ssl\.c:\d+\)?", "", m.group(0)).strip() if m else type(e).__name__


def _oras_registry(ref: Ref, insecure: bool, ca_cert: Path | None) -> Any:
    import oras.auth
    import oras.provider
    import requests

    class Session(requests.Session):
        def request(self, *args, **kwargs):
            kwargs.setdefault("timeout", TIMEOUT)
            return super().request(*args, **kwargs)

    class Auth(oras.auth.BasicAuth):
        """Basic auth from the environment, else from the docker config file."""

        def __init__(self, basic: str | None):
            super().__init__()
            self.from_env = basic is not None
            self._basic_auth = basic

        def load_configs(self, container, configs=None):
            if not self.from_env:         # the environment wins over the docker config file
                super().load_configs(container, configs=_docker_configs() + list(configs or []))

        def authenticate_request(self, original, headers, refresh=False):
            if not self._basic_auth:
                return headers or {}, False
            return super().authenticate_request(original, headers, refresh)

    class Registry(oras.provider.Registry):
        do_request = oras.provider.Registry.do_request.__wrapped__     # no retry loop, see the docstring

    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    basic = None
    if user or password:
        if not (user and password):
            raise UsageError(f"set both {USER_ENV} and {PASSWORD_ENV} (only one is set)")
        import oras.auth.utils

        basic = oras.auth.utils.get_basic_auth(user, password)
    registry = Registry(hostname=ref.location, insecure=insecure, tls_verify=str(ca_cert) if ca_cert else True,
                        auth_backend="basic")
    registry.session = Session()
    auth = Auth(basic)
    auth.session, auth.prefix, auth._tls_verify = registry.session, registry.prefix, registry._tls_verify
    registry.auth = auth
    return registry


class RegistryStore:
    """push / resolve / fetch / tags on one repository of an OCI registry."""

    def __init__(self, ref: Ref, *, insecure: bool = False, ca_cert: Path | None = None):
        if insecure and not ref.is_loopback:
            raise UsageError(f"{ref}: --insecure (plain HTTP) is only for a registry on this machine "
                             f"(localhost, 127.0.0.1, ::1), not {ref.location}")
        if ca_cert is not None and not Path(ca_cert).is_file():
            raise UsageError(f"--ca-cert {ca_cert}: file not found")
        self.ref, self.insecure = ref, insecure
        self.where = ref.repo_text
        self._oras = _oras_registry(ref, insecure, ca_cert)
        self._oras.auth.load_configs(self._container("latest"))
        self._checked = False

    def _ping(self) -> None:
        """GET /v2/ once: reachability, TLS and credentials are told apart here, before any
        upload or download (oras-py reports a refused upload only as a missing session URL)."""
        if not self._checked:
            self._call("connecting", self._oras.do_request, f"{self._oras.prefix}://{self.ref.location}/v2/", "GET")
            self._checked = True

    def _container(self, reference: str) -> Any:
        sep = "@" if reference.startswith("sha256:") else ":"
        return self._oras.get_container(f"{self.ref.location}/{self.ref.repository}{sep}{reference}")

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        """Run one oras call; turn a transport failure or an error status into one clear line."""
        import requests

        host = self.ref.location
        try:
            response = fn(*args)
        except requests.exceptions.SSLError as e:
            hint = ("; it may serve plain HTTP: for a registry on this machine pass --insecure" if "WRONG_VERSION" in
                    str(e).upper() or "wrong version" in str(e) else "; a registry with a self-signed certificate "
                    "needs --ca-cert FILE (its certificate or CA)")
            raise RegistryUnreachable(f"{host}: TLS handshake failed ({_reason(e)}){hint}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise RegistryUnreachable(f"{host}: registry unreachable while {what} ({_reason(e)})") from None
        except ValueError as e:       # oras-py's own complaints (no upload session, no credentials)
            if "authentication" in str(e):
                raise UsageError(f"{host}: the registry asks for credentials and none are set: set {USER_ENV} and "
                                 f"{PASSWORD_ENV}, or `docker login {host}`") from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"{self.where}: {what} refused ({first})") from None
        if response.status_code in ok:
            return response
        code = response.status_code
        if code == 401:
            source = f"${USER_ENV}/${PASSWORD_ENV}" if self._oras.auth.from_env else "the docker config file"
            raise UsageError(f"{host}: credentials refused (401 Unauthorized; they came from {source})")
        if code == 403:
            raise UsageError(f"{host}: access to {self.ref.repository} denied (403) while {what}")
        if code >= 500:
            raise RegistryUnreachable(f"{host}: the registry failed while {what} ({code} {response.reason})")
        try:
            detail = "; ".join(e.get("message", "") for e in response.json().get("errors", []))
        except ValueError:
            detail = response.reason
        raise UsageError(f"{self.where}: {what} refused ({code}: {detail})")

    def push(self, artifact: Artifact, tags: list[str], on_blob: Callable[[str], None] = lambda _: None) -> str:
        """Upload every blob, then the manifest under each tag. Returns the manifest's digest
        (as the registry computed it; every tag must name the same one)."""
        self._ping()
        first = self._container(tags[0])
        for path, layer in artifact.blobs:
            self._call(f"uploading {path.name}", self._oras.upload_blob, str(path), first, layer)
            on_blob(path.name)
        digests = []
        for tag in tags:
            response = self._call(f"tagging {tag}", self._oras.upload_manifest, artifact.manifest, self._container(tag))
            digests.append(response.headers.get("Docker-Content-Digest")
                           or "sha256:" + hashlib.sha256(manifest_bytes(artifact.manifest)).hexdigest())
        if len(set(digests)) != 1:
            raise RegistryUnreachable(f"{self.where}: the registry stored one manifest under several digests "
                                      f"({', '.join(sorted(set(digests)))})")
        return digests[0]

    def resolve(self, reference: str) -> tuple[dict[str, Any], str]:
        """(manifest, digest) for a tag or digest; the digest is that of the bytes received."""
        self._ping()
        container = self._container(reference)
        url = f"{self._oras.prefix}://{container.manifest_url()}"
        response = self._call(f"fetching {reference}", self._oras.do_request, url, "GET",
                              None, {"Accept": ", ".join(ACCEPT)}, ok=(200, 404))
        if response.status_code == 404:
            raise UsageError(f"{self.where}: no {'artifact' if reference.startswith('sha256:') else 'tag'} "
                             f"{reference} (tags: {', '.join(sorted(self.tags())) or 'none'})")
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise UsageError(f"{self.where}@{reference}: the registry sent a manifest whose digest is {digest}: refused")
        try:
            return response.json(), digest
        except ValueError:
            raise UsageError(f"{self.where}:{reference}: the manifest is not JSON") from None

    def fetch(self, digest: str, dest: Path, size: int) -> None:
        """Download a blob to dest, refusing more bytes than the manifest says it has."""
        container = self._container(digest)
        response = self._call(f"downloading {dest.name}", self._oras.get_blob, container, digest, True)
        written = 0
        with response, open(dest, "wb") as f:
            for chunk in response.iter_content(chunk_size=1 << 20):
                written += len(chunk)
                if written > size:
                    raise UsageError(f"{self.where}@{digest}: the registry sent more than the {size} bytes the "
                                     f"manifest names for {dest.name}: refused")
                f.write(chunk)

    def tags(self) -> list[str]:
        self._ping()
        url = f"{self._oras.prefix}://{self._container('latest').tags_url()}"
        response = self._call("listing tags", self._oras.do_request, url, "GET", ok=(200, 404))
        if response.status_code == 404:
            return []
        return list(response.json().get("tags") or [])


__all__ = ["ARTIFACT_TYPE", "PASSWORD_ENV", "USER_ENV", "RegistryStore"]
