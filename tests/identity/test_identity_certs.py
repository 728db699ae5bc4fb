"""Trust anchor, issuer and leaf certificates: generation, loading, chain checks."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from meshctl.identity import certs
from meshctl.identity.certs import CertificateError

from helpers_identity import anchor, issuer  # noqa: F401 (fixtures)


def test_anchor_and_issuer_are_p256_cas_with_defaults(anchor, issuer):
    a, i = certs.describe(anchor.certificate), certs.describe(issuer.certificate)
    assert a.subject == "CN=root.meshctl.cluster.local" and a.is_ca and a.key_algorithm == "ECDSA secp256r1"
    assert i.subject == "CN=identity.meshctl.cluster.local" and i.is_ca and i.issuer == a.subject
    lifetime = i.not_after - i.not_before
    assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=365, seconds=30)
    assert issuer.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_load_issuer_accepts_a_good_pair(anchor, issuer):
    loaded = certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=issuer.key_pem, trust_anchors_pem=anchor.cert_pem)
    assert loaded.not_after == issuer.certificate.not_valid_after_utc


def test_issuer_of_another_anchor_is_refused(issuer):
    other = certs.generate_trust_anchor()
    with pytest.raises(CertificateError, match="issuer certificate: not signed by any of the trust anchors"):
        certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=issuer.key_pem, trust_anchors_pem=other.cert_pem)


def test_key_of_another_pair_is_refused(anchor, issuer):
    with pytest.raises(CertificateError, match="issuer key: does not match"):
        certs.load_issuer(cert_pem=issuer.cert_pem, key_pem=anchor.key_pem, trust_anchors_pem=anchor.cert_pem)


def test_expired_and_not_yet_valid_issuers_are_refused(anchor):
    past = certs.generate_issuer(anchor, lifetime=dt.timedelta(hours=1), now=certs.utcnow() - dt.timedelta(days=2))
    with pytest.raises(CertificateError, match="expired at"):
        certs.load_issuer(cert_pem=past.cert_pem, key_pem=past.key_pem, trust_anchors_pem=anchor.cert_pem)
    future = certs.generate_issuer(anchor, now=certs.utcnow() + dt.timedelta(days=2))
    with pytest.raises(CertificateError, match="not valid before"):
        certs.load_issuer(cert_pem=future.cert_pem, key_pem=future.key_pem, trust_anchors_pem=anchor.cert_pem)


def test_leaf_is_not_an_issuer(anchor, issuer):
    key = certs.new_private_key()
    leaf = certs.issue_leaf(issuer, public_key=key.public_key(), dns_name="a.b.serviceaccount.identity.meshctl.cluster.local")
    with pytest.raises(CertificateError, match="not a CA certificate"):
        certs.load_issuer(cert_pem=certs.cert_to_pem(leaf), key_pem=certs.key_to_pem(key), trust_anchors_pem=anchor.cert_pem)


def test_leaf_has_one_san_is_backdated_and_clamped_to_issuer(anchor):
    now = certs.utcnow()
    short = certs.generate_issuer(anchor, lifetime=dt.timedelta(hours=2), now=now)
    key = certs.new_private_key()
    leaf = certs.issue_leaf(short, public_key=key.public_key(), dns_name="web.shop.serviceaccount.identity.meshctl.cluster.local",
                            now=now)
    info = certs.describe(leaf)
    assert info.dns_names == ("web.shop.serviceaccount.identity.meshctl.cluster.local",)
    assert info.not_before <= now.replace(microsecond=0) - certs.CLOCK_SKEW_ALLOWANCE
    assert info.not_after == short.certificate.not_valid_after_utc  # 24h asked, issuer has 2h
    certs.verify_chain([leaf, short.certificate], [anchor.certificate], source="leaf")


def test_verify_chain_names_the_broken_link(anchor, issuer):
    key = certs.new_private_key()
    leaf = certs.issue_leaf(issuer, public_key=key.public_key(), dns_name="x")
    other_issuer = certs.generate_issuer(anchor)
    with pytest.raises(CertificateError, match="certificate 1 is not signed by certificate 2"):
        certs.verify_chain([leaf, other_issuer.certificate], [anchor.certificate], source="leaf")


def test_bad_pem_names_the_source(tmp_path):
    (tmp_path / "c.pem").write_text("hello")
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateError, match=r"c\.pem: no PEM certificate found"):
        certs.load_key_pair_files(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(CertificateError, match=r"missing\.pem: No such file"):
        certs.load_key_pair_files(str(tmp_path / "missing.pem"), str(tmp_path / "k.pem"))
    with pytest.raises(CertificateError, match="not an unencrypted PEM private key"):
        certs.load_private_key((tmp_path / "k.pem").read_text(), source="k.pem")
