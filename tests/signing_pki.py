"""Key material for the signature tests, made with ``cryptography``: elliptic-curve key pairs and
a small PKI (a root CA, an intermediate, a code-signing leaf, an expired leaf, and a second CA
that trusts none of them), written as PEM files."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: the real model-signing command line, installed beside this interpreter
MODEL_SIGNING = str(Path(sys.executable).with_name("model_signing"))


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@dataclass(frozen=True)
class Pki:
    root: Path          # the CA users trust (--certificate-chain)
    intermediate: Path  # embedded in the signature with the leaf
    leaf: Path          # signing certificate for `signer`
    signer: Keys
    expired_leaf: Path  # same key, a certificate that expired yesterday
    other_root: Path    # a CA that never issued any of these


def _write_key(key: ec.EllipticCurvePrivateKey, folder: Path, name: str) -> Keys:
    priv, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return Keys(priv, pub)


def key_pair(folder: Path, name: str) -> Keys:
    """A P-256 key pair: ``<name>.pem`` (private, PKCS#8) and ``<name>.pub``."""
    return _write_key(ec.generate_private_key(ec.SECP256R1()), folder, name)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, start: dt.datetime, end: dt.datetime,
          email: str | None = None) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                 encipher_only=False, decipher_only=False)
    b = b.add_extension(x509.KeyUsage(**usage), critical=True)
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    root_key, int_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Root CA", root_key, "Test Root CA", root_key, ca=True, start=now - 30 * day, end=now + 365 * day)
    inter = _cert("Test Intermediate", int_key, "Test Root CA", root_key, ca=True, start=now - 20 * day,
                  end=now + 300 * day)
    other = _cert("Other CA", other_key, "Other CA", other_key, ca=True, start=now - 30 * day, end=now + 365 * day)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = _write_key(signer_key, folder, "publisher")
    leaf = _cert("Model Publisher", signer_key, "Test Intermediate", int_key, ca=False,
                 start=now - 10 * day, end=now + 90 * day, email="models@example.org")
    expired = _cert("Model Publisher", signer_key, "Test Intermediate", int_key, ca=False,
                    start=now - 10 * day, end=now - day)
    paths = {}
    for name, cert in (("root", root), ("intermediate", inter), ("leaf", leaf), ("expired", expired),
                       ("other-root", other)):
        paths[name] = folder / f"{name}.crt"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(paths["root"], paths["intermediate"], paths["leaf"], signer, paths["expired"],
               paths["other-root"])
