"""A real registry for the image tests: Debian's ``docker-registry`` (CNCF distribution 2.8).

It listens on 127.0.0.1 of the test network namespace (conftest moves pytest there), in one of
three modes: no auth, htpasswd (basic), or token (bearer challenge) with a token server
written here: a small HTTP server that checks basic credentials and signs a JWT (RS256) with
a throwaway key whose self-signed certificate the registry trusts. Images are pushed from the
OCI layouts cached by ``tests/fixtures/build-images.sh`` with ``skopeo``; nothing leaves the
namespace's loopback.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from conftest import free_port

CACHE = os.environ.get("SANDBOXD_TEST_CACHE", "/var/cache/sandboxd-test")
LAYOUTS = os.path.join(CACHE, "images")
USER, PASSWORD = "puller", "s3cret-" + secrets.token_hex(4)
SERVICE, ISSUER = "sandboxd-test-registry", "sandboxd-test-issuer"


def layouts_ready() -> bool:
    return (
        any(n.startswith(".built-") for n in os.listdir(LAYOUTS))
        if os.path.isdir(LAYOUTS)
        else False
    )


def hub_layout_ready() -> bool:
    """The JupyterHub single-user image (built apart, with its own stamp)."""
    return os.path.isdir(LAYOUTS) and any(n.startswith(".built-hub-") for n in os.listdir(LAYOUTS))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry tokens for the right basic credentials (and anonymous pull if asked)."""

    def __init__(self, workdir: str, anonymous_pull: bool = False) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        self._padding, self._hashes = padding, hashes
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = os.path.join(workdir, "token-cert.pem")
        with open(self.cert_path, "wb") as fh:
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
        self.anonymous_pull = anonymous_pull
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, scope: str, granted: bool) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        access = []
        if scope and granted:
            kind, name, actions = scope.split(":", 2)
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), self._padding.PKCS1v15(), self._hashes.SHA256())
        return f"{signing}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlsplit(self.path).query)
                scope = query.get("scope", [""])[0]
                auth = self.headers.get("Authorization", "")
                outer.requests.append({"scope": scope, "auth": bool(auth)})
                if auth and auth != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                granted = auth == expected or (outer.anonymous_pull and scope.endswith(":pull"))
                body = json.dumps({"token": outer.token(scope, granted), "expires_in": 300})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Registry:
    """One ``docker-registry`` process; ``mode`` is ``none``, ``htpasswd`` or ``token``."""

    def __init__(self, mode: str = "none", anonymous_pull: bool = False) -> None:
        self.mode = mode
        self.dir = tempfile.mkdtemp(prefix="sbx-registry-")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.token_server: TokenServer | None = None
        auth = ""
        if mode == "htpasswd":
            htpasswd = os.path.join(self.dir, "htpasswd")
            out = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
            ).stdout
            with open(htpasswd, "w") as fh:
                fh.write(out)
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
        elif mode == "token":
            self.token_server = TokenServer(self.dir, anonymous_pull)
            auth = (
                "auth:\n  token:\n"
                f"    realm: {self.token_server.realm}\n"
                f"    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {self.token_server.cert_path}\n"
            )
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as fh:
            fh.write(
                "version: 0.1\nlog:\n  level: warn\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
                "  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth
            )
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", config], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(open(os.path.join(self.dir, "registry.log")).read())
            try:
                requests.get(f"http://{self.host}/v2/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not come up")

    def push(self, layout: str, name: str, *, compress: str | None = None) -> None:
        """``skopeo copy`` a cached OCI layout (``busybox``, ``python``) to ``name`` (repo:tag);
        ``compress="zstd"`` recompresses the layers first, into a local layout (skopeo keeps
        compressed blobs, and reuses ones the registry has, when it copies straight there)."""
        source = f"oci:{os.path.join(LAYOUTS, layout)}:latest"
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.mode != "none":
            cmd.append(f"--dest-creds={USER}:{PASSWORD}")
        plain = os.path.join(self.dir, f"plain-{secrets.token_hex(4)}")
        try:
            if compress:
                for step in (
                    ["--dest-decompress", source, f"dir:{plain}"],
                    ["--dest-compress-format", compress, "--dest-compress"]
                    + [f"dir:{plain}", f"oci:{plain}-oci:latest"],
                ):
                    subprocess.run(
                        ["skopeo", "copy", "--quiet", *step],
                        check=True,
                        capture_output=True,
                        timeout=300,
                    )
                source = f"oci:{plain}-oci:latest"
                cmd.append("--preserve-digests")  # no swap for a gzip twin the registry has
            cmd += [source, f"docker://{self.host}/{name}"]
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        finally:
            shutil.rmtree(plain, ignore_errors=True)
            shutil.rmtree(f"{plain}-oci", ignore_errors=True)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The ``[images.registries."<host>"]`` table to reach this registry."""
        table: dict[str, Any] = {"insecure": True, **extra}
        return table

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.token_server:
            self.token_server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def upload_blob(host: str, name: str, data: bytes) -> str:
    """Monolithic blob upload to a no-auth registry; the blob's digest."""
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = requests.post(f"http://{host}/v2/{name}/blobs/uploads/", timeout=30)
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    resp = requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert resp.status_code == 201, resp.text
    return digest


def push_raw(
    host: str,
    name: str,
    layers: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    config: dict[str, Any] | None = None,
    compress: str = "gzip",
    tag: str = "latest",
) -> dict[str, Any]:
    """Push an image made of hand-built layer tars (uncompressed) to a no-auth registry.

    ``diff_ids`` may lie (to test that the client checks them). Returns the digests."""
    import gzip
    import hashlib

    import zstandard

    descriptors, real = [], []
    for tar in layers:
        real.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if compress == "gzip":
            blob, media = gzip.compress(tar), "application/vnd.oci.image.layer.v1.tar+gzip"
        elif compress == "zstd":
            blob = zstandard.ZstdCompressor().compress(tar)
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob, media = tar, "application/vnd.oci.image.layer.v1.tar"
        digest = upload_blob(host, name, blob)
        descriptors.append({"mediaType": media, "digest": digest, "size": len(blob)})
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or real},
    }
    raw_config = json.dumps(doc).encode()
    config_digest = upload_blob(host, name, raw_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(raw_config),
        },
        "layers": descriptors,
    }
    raw = json.dumps(manifest).encode()
    resp = requests.put(
        f"http://{host}/v2/{name}/manifests/{tag}",
        data=raw,
        headers={"Content-Type": manifest["mediaType"]},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return {
        "manifest": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "manifest_size": len(raw),
        "config": config_digest,
        "diff_ids": real,
        "layers": descriptors,
    }


def blob_file(registry_dir: str, digest: str) -> str:
    """Where the filesystem storage driver keeps a blob (to corrupt it in a test)."""
    hexid = digest.split(":", 1)[1]
    return os.path.join(
        registry_dir, "data/docker/registry/v2/blobs/sha256", hexid[:2], hexid, "data"
    )
