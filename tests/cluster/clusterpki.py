"""Certificates, service-account keys and kubeconfigs for the test control plane (openssl CLI).

ECDSA P-256 everywhere: generation takes milliseconds, and Kubernetes accepts it for serving,
client and service-account (ES256) keys.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The apiserver's serving certificate is valid for these names; only 127.0.0.1 is ever dialled.
SERVER_NAMES = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
)

# name -> (subject, extended key usage). Each component gets its own identity so the
# apiserver's bootstrap RBAC roles apply to it exactly as in a real cluster.
CLIENTS = {
    "admin": ("/O=system:masters/CN=bigmodel-admin", "clientAuth"),
    "kube-controller-manager": ("/CN=system:kube-controller-manager", "clientAuth"),
    "kube-scheduler": ("/CN=system:kube-scheduler", "clientAuth"),
    "kwok": ("/O=system:masters/CN=kwok-controller", "clientAuth"),
}


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], check=False, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path.name, cwd=path.parent)


def _ca(pki: Path, name: str, subject: str) -> None:
    _ec_key(pki / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-subj",
        subject,
        "-days",
        "3650",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def _sign(pki: Path, name: str, subject: str, extensions: str, ca: str = "ca") -> None:
    _ec_key(pki / f"{name}.key")
    (pki / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def apiserver_identity_flags(pki: Path, service_cidr: str) -> list[str]:
    """kube-apiserver flags for the front proxy (aggregation) and service-account tokens, from `pki`."""
    return [
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={service_cidr}",
    ]


@dataclass(frozen=True)
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @classmethod
    def create(cls, pki: Path) -> Pki:
        pki.mkdir(parents=True, exist_ok=True)
        pki.chmod(0o700)
        _ca(pki, "ca", "/CN=bigmodel-devcluster-ca")
        usage = "keyUsage=critical,digitalSignature,keyEncipherment\n"
        _sign(
            pki,
            "kube-apiserver",
            "/CN=kube-apiserver",
            usage + f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(SERVER_NAMES)}\n",
        )
        for name, (subject, eku) in CLIENTS.items():
            _sign(pki, name, subject, usage + f"extendedKeyUsage={eku}\n")
        # Aggregation layer (request-header auth); without it every component logs errors
        # about the missing requestheader CA bundle.
        _ca(pki, "front-proxy-ca", "/CN=bigmodel-devcluster-front-proxy-ca")
        _sign(
            pki,
            "front-proxy-client",
            "/CN=front-proxy-client",
            usage + "extendedKeyUsage=clientAuth\n",
            ca="front-proxy-ca",
        )
        # Service-account token signing key (TokenRequest) and its public half.
        _ec_key(pki / "sa.key")
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        return cls(pki)

    def kubeconfig(self, client: str, server: str) -> str:
        def b64(name: str) -> str:
            return base64.b64encode((self.dir / name).read_bytes()).decode()

        return f"""apiVersion: v1
kind: Config
clusters:
- name: bigmodel-dev
  cluster:
    server: {server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: {client}
  user:
    client-certificate-data: {b64(client + ".crt")}
    client-key-data: {b64(client + ".key")}
contexts:
- name: bigmodel-dev
  context:
    cluster: bigmodel-dev
    user: {client}
current-context: bigmodel-dev
"""
