"""TLS start-up errors name the file and what is wrong with it (no OpenSSL jargon alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from wsnic_trio.errors import SetupError
from wsnic_trio.transports._tlsio import TlsContext

from .test_security import write_cert


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert, key = write_cert(ca, tmp_path, "a")
    _, other = write_cert(ca, tmp_path, "b")
    both = tmp_path / "both.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    damaged = tmp_path / "damaged.crt"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    return {"cert": cert, "key": key, "other": other, "both": both, "enc": encrypted,
            "damaged": damaged, "dir": tmp_path}  # fmt: skip


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("dir/nope.crt", None, "TLS: cannot read certificate {dir}/nope.crt: No such file"),
        ("cert", "dir/nope.key", "TLS: cannot read private key {dir}/nope.key: No such file"),
        ("cert", None, "TLS: {cert} holds no private key; give the key with -k/--wss-private-key"),
        ("key", None, "TLS: {key} holds no PEM certificate"),
        ("cert", "cert", "TLS: {cert} holds no PEM private key"),
        ("cert", "other", "TLS: the private key in {other} does not match the certificate {cert}"),
        ("cert", "enc", "TLS: the private key in {enc} is encrypted; give an unencrypted key"),
        ("damaged", "key", "TLS: cannot load certificate {damaged} with key {key}: the PEM data"),
        ("dir", None, "TLS: cannot read certificate {dir}: Is a directory"),
    ],
)
def test_bad_tls_files_are_named(
    pem: dict[str, Path], cert: str, key: str | None, message: str
) -> None:
    def path(name: str) -> Path:
        base, _, rest = name.partition("/")
        return pem[base] / rest if rest else pem[base]

    with pytest.raises(SetupError) as info:
        TlsContext(path(cert), path(key) if key else None)
    assert str(info.value).startswith(message.format(**{k: str(v) for k, v in pem.items()}))


def test_a_certificate_holding_its_key_loads(pem: dict[str, Path]) -> None:
    assert TlsContext(pem["both"], None).context is not None
    assert TlsContext(pem["cert"], pem["key"]).context is not None
