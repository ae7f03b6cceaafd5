"""A real OCI registry on loopback for the shipping tests: Debian's `docker-registry`
(the CNCF distribution registry 2.8), with htpasswd (bcrypt) authentication and, on
request, a self-signed TLS certificate.

`LoopbackRegistry(root).start()` writes an htpasswd file (apache2-utils' `htpasswd -B`), a
config and, with tls=True, a certificate for 127.0.0.1; runs `docker-registry serve
CONFIG` on a free port with its storage under `root`; and waits until /v2/ answers.
`blob_path(digest)` is where the registry keeps a blob on disk (for the tamper test).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
INSTALL_HINT = "install docker-registry and apache2-utils (scripts/install-system-deps.sh; CI runs it)"
USER, PASSWORD = "ci-user", "s3cret-pa55word"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A P-256 key and a certificate for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "registry.crt", folder / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class LoopbackRegistry:
    def __init__(self, root: Path, tls: bool = False):
        self.root, self.tls = Path(root), tls
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.storage = self.root / "storage"
        self.cert: Path | None = None
        self.log = self.root / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The credentials as edgepack reads them."""
        return {"EDGEPACK_REGISTRY_USERNAME": USER, "EDGEPACK_REGISTRY_PASSWORD": PASSWORD}

    def start(self, attempts: int = 3) -> LoopbackRegistry:
        missing = [p for p in (REGISTRY, shutil.which("htpasswd")) if not p or not Path(p).exists()]
        if missing:
            raise RuntimeError(f"the registry tests need {REGISTRY} and htpasswd: {INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd = self.root / "htpasswd"
        entry = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True,
                               timeout=30).stdout
        htpasswd.write_text(entry)
        key = None
        if self.tls:
            self.cert, key = self_signed_certificate(self.root)
        for _ in range(attempts):               # another program may take the free port first
            self.port = free_port()
            tls = f"  tls:\n    certificate: {self.cert}\n    key: {key}\n" if self.tls else ""
            config = self.root / "config.yml"
            config.write_text(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: edgepack-tests\n{tls}"
                f"auth:\n  htpasswd:\n    realm: edgepack-tests\n    path: {htpasswd}\n")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start on 127.0.0.1 ({attempts} tries); its log:\n"
                           f"{self.log.read_text()}")

    def _wait_ready(self, seconds: float = 15) -> bool:
        """Until GET /v2/ answers (401: it asks for the credentials) or the process exits."""
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.cert)) if self.tls else None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"{scheme}://{self.host}/v2/", timeout=2, context=context)
                return True
            except urllib.error.HTTPError as e:
                return e.code == 401
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        return False

    def blob_path(self, digest: str) -> Path:
        """Where distribution 2.8's filesystem driver keeps a blob."""
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
