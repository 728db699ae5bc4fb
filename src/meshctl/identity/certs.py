"""The mesh's certificates: trust anchor (root), issuer (intermediate), leaves.

ECDSA P-256 throughout, as Linkerd's ``linkerd identity`` / ``step certificate
create`` recipes make them.  Everything here is pure: PEM text in, PEM text
or plain data out, the clock passed in as ``now`` where it matters, so
``meshctl install``, ``meshctl identity`` and the identity service share one
implementation and tests can build expired or not-yet-valid certificates.

Bad input raises :class:`CertificateError` (an ``InputError``: one line,
naming the source and the problem).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshctl.errors import InputError

DEFAULT_ANCHOR_NAME = "root.meshctl.cluster.local"
DEFAULT_ISSUER_NAME = "identity.meshctl.cluster.local"
# Linkerd's docs make the root live ten years and the issuer one; the issuer is
# the one rotated, the anchor is distributed to every proxy and changes rarely.
ANCHOR_LIFETIME = dt.timedelta(days=3650)
ISSUER_LIFETIME = dt.timedelta(days=365)
LEAF_LIFETIME = dt.timedelta(hours=24)
# Linkerd's identity controller backdates leaves by its clock-skew allowance
# (default 20 s) so a peer whose clock runs a little behind still accepts them.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(seconds=20)


class CertificateError(InputError):
    """A certificate, key or chain that cannot be used; the message names its source."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, both PEM text."""

    cert_pem: str
    key_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return serialization.load_pem_private_key(self.key_pem.encode(), password=None)


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What ``meshctl identity show`` prints about one certificate."""

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    key_algorithm: str
    sha256_fingerprint: str

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["dns_names"] = list(self.dns_names)
        data["not_before"] = _rfc3339(self.not_before)
        data["not_after"] = _rfc3339(self.not_after)
        return data


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    # PKCS#8 unencrypted: what Kubernetes TLS secrets and Python's ssl both read.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _leaf_subject(identity: str) -> x509.Name:
    # The identity lives in the DNS SAN; CN (at most 64 characters, RFC 5280
    # ub-common-name) repeats it only when it fits, for humans reading certs.
    return _name(identity) if len(identity) <= 64 else x509.Name([])


def _ca_extensions(builder: x509.CertificateBuilder, *, public_key, issuer_key, path_length: int | None):
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )


def _serial() -> int:
    return x509.random_serial_number()


def generate_trust_anchor(*, common_name: str = DEFAULT_ANCHOR_NAME, lifetime: dt.timedelta = ANCHOR_LIFETIME,
                          now: dt.datetime | None = None) -> KeyPair:
    """A self-signed root: the mesh's trust anchor, distributed to every proxy."""
    now = now or utcnow()
    key = new_private_key()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(_name(common_name))
               .public_key(key.public_key()).serial_number(_serial())
               .not_valid_before(now - CLOCK_SKEW_ALLOWANCE).not_valid_after(now + lifetime))
    # path_length=1: the root may sign the issuer, which signs only leaves.
    builder = _ca_extensions(builder, public_key=key.public_key(), issuer_key=key, path_length=1)
    cert = builder.sign(key, hashes.SHA256())
    return KeyPair(cert_to_pem(cert), key_to_pem(key))


def generate_issuer(anchor: KeyPair, *, common_name: str = DEFAULT_ISSUER_NAME,
                    lifetime: dt.timedelta = ISSUER_LIFETIME, now: dt.datetime | None = None) -> KeyPair:
    """An intermediate CA signed by *anchor*: what the identity service signs leaves with.

    Its validity is clamped to the anchor's: a chain is only as valid as its shortest link.
    """
    now = now or utcnow()
    anchor_cert, anchor_key = anchor.certificate, anchor.private_key
    key = new_private_key()
    not_after = min(now + lifetime, anchor_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(anchor_cert.subject)
               .public_key(key.public_key()).serial_number(_serial())
               .not_valid_before(now - CLOCK_SKEW_ALLOWANCE).not_valid_after(not_after))
    builder = _ca_extensions(builder, public_key=key.public_key(), issuer_key=anchor_key, path_length=0)
    cert = builder.sign(anchor_key, hashes.SHA256())
    return KeyPair(cert_to_pem(cert), key_to_pem(key))


def issue_leaf(issuer: KeyPair, *, public_key, dns_name: str, lifetime: dt.timedelta = LEAF_LIFETIME,
               now: dt.datetime | None = None, backdate: dt.timedelta = CLOCK_SKEW_ALLOWANCE) -> x509.Certificate:
    """A workload certificate for *dns_name*, signed by *issuer*.

    The leaf carries exactly one DNS SAN (the identity) and is usable for both
    ends of mTLS (serverAuth and clientAuth), as Linkerd's leaves are.  It never
    outlives the issuer.
    """
    now = now or utcnow()
    issuer_cert, issuer_key = issuer.certificate, issuer.private_key
    not_after = min(now + lifetime, issuer_cert.not_valid_after_utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_leaf_subject(dns_name)).issuer_name(issuer_cert.subject)
               .public_key(public_key).serial_number(_serial())
               .not_valid_before(now - backdate).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


# --- loading and validation ----------------------------------------------------

def load_certificates(pem: str | bytes, *, source: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; at least one, or a CertificateError naming *source*."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"{source}: no PEM certificate found")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{source}: not a valid PEM certificate ({exc})") from None


def load_private_key(pem: str | bytes, *, source: str) -> ec.EllipticCurvePrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError(f"{source}: expected an ECDSA P-256 key, got {type(key).__name__}")
    return key


def describe(cert: x509.Certificate) -> CertificateInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    pub = cert.public_key()
    algo = f"ECDSA {pub.curve.name}" if isinstance(pub, ec.EllipticCurvePublicKey) else type(pub).__name__
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), dns_names=dns_names,
        serial=format(cert.serial_number, "x"), not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        is_ca=is_ca, key_algorithm=algo,
        sha256_fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def check_validity(cert: x509.Certificate, *, source: str, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"{source}: not valid before {_rfc3339(cert.not_valid_before_utc)}")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{source}: expired at {_rfc3339(cert.not_valid_after_utc)}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate], *, source: str,
                 now: dt.datetime | None = None) -> None:
    """Check that ``chain[0]`` leads through ``chain[1:]`` to one of *anchors*, every link valid at *now*.

    Signature, issuer name and validity window of each link; every certificate
    above the first must be a CA.  Raises CertificateError naming what failed.
    """
    now = now or utcnow()
    for i, cert in enumerate(chain):
        check_validity(cert, source=f"{source} (certificate {i + 1})", now=now)
        if i and not _is_ca(cert):
            raise CertificateError(f"{source} (certificate {i + 1}): not a CA certificate")
    for i in range(len(chain) - 1):
        if not _issued_by(chain[i], chain[i + 1]):
            raise CertificateError(f"{source}: certificate {i + 1} is not signed by certificate {i + 2}")
    top = chain[-1]
    for anchor in anchors:
        if anchor == top or (_is_ca(anchor) and _issued_by(top, anchor)):
            check_validity(anchor, source=f"{source} (trust anchor {anchor.subject.rfc4514_string()})", now=now)
            return
    raise CertificateError(f"{source}: not signed by any of the trust anchors")


@dataclasses.dataclass(frozen=True, slots=True)
class Issuer:
    """A validated issuer: its key pair, the anchors it chains to, and their PEM bundle."""

    key_pair: KeyPair
    trust_anchors_pem: str
    not_after: dt.datetime

    @property
    def certificate(self) -> x509.Certificate:
        return self.key_pair.certificate


def load_issuer(*, cert_pem: str, key_pem: str, trust_anchors_pem: str, now: dt.datetime | None = None,
                cert_source: str = "issuer certificate", key_source: str = "issuer key",
                anchors_source: str = "trust anchors") -> Issuer:
    """Load and check an issuer as ``meshctl install`` and the identity service take it.

    The certificate must be a CA, currently valid, matching its key, and chain
    to one of the (CA, currently valid) trust anchors.
    """
    now = now or utcnow()
    anchors = load_certificates(trust_anchors_pem, source=anchors_source)
    for i, anchor in enumerate(anchors):
        if not _is_ca(anchor):
            raise CertificateError(f"{anchors_source} (certificate {i + 1}): not a CA certificate")
        check_validity(anchor, source=f"{anchors_source} (certificate {i + 1})", now=now)
    chain = load_certificates(cert_pem, source=cert_source)
    key = load_private_key(key_pem, source=key_source)
    if key.public_key().public_numbers() != chain[0].public_key().public_numbers():
        raise CertificateError(f"{key_source}: does not match the public key of {cert_source}")
    if not _is_ca(chain[0]):
        raise CertificateError(f"{cert_source}: not a CA certificate (basicConstraints CA:TRUE is required)")
    verify_chain(chain, anchors, source=cert_source, now=now)
    return Issuer(KeyPair(cert_to_pem(chain[0]), key_to_pem(key)), trust_anchors_pem, chain[0].not_valid_after_utc)


def load_key_pair_files(cert_path: str, key_path: str) -> KeyPair:
    """Read a certificate and key file pair; errors name the file."""
    cert_pem = read_text(cert_path)
    key_pem = read_text(key_path)
    certs = load_certificates(cert_pem, source=cert_path)
    key = load_private_key(key_pem, source=key_path)
    if key.public_key().public_numbers() != certs[0].public_key().public_numbers():
        raise CertificateError(f"{key_path}: does not match the public key of {cert_path}")
    return KeyPair(cert_pem, key_pem)


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CertificateError(f"{path}: not PEM text") from None
