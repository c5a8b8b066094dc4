"""Mutual TLS between the broker's plugin and the daemon over TCP (docs/identity.md).

The daemon presents its certificate and accepts only clients whose
certificate is signed by the link CA (`--tls-ca`); the plugin does the same
the other way round (`auth_opt_policyd_tls_ca/_cert/_key`). Certificates come
from `policyd certs server` (the daemon) and `policyd certs client` (each broker).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from .listen import ListenError


@dataclass(frozen=True)
class LinkTls:
    ca: str
    cert: str
    key: str

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = (_read(path, what) for path, what in
                         ((self.ca, "--tls-ca"), (self.cert, "--tls-cert"), (self.key, "--tls-key")))
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ListenError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ListenError(f"{what} {path} is not PEM")
    return data
