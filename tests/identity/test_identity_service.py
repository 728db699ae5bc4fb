"""The identity service: the CSR/token refusal matrix, rate limits, and real TLS round trips."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from helpers_identity import anchor, issuer, MESH, SVC_NAME, identity_settings, make_authority, running_service  # noqa: F401 (fixtures)
from meshctl.errors import InputError
from meshctl.identity import certs, service, tokens
from meshctl.identity.tokens import ServiceAccountRef, TokenRejected

WEB = "web.shop.serviceaccount.identity.meshctl.cluster.local"
WEB_SA = ServiceAccountRef("shop", "web")
NOW = certs.utcnow()


@pytest.fixture(autouse=True)
def _fresh_now():
    """NOW per test, not per import: the issuer fixture is backdated only by the 20 s clock-skew
    allowance, and collecting the whole suite on a loaded machine can take longer than that."""
    global NOW
    NOW = certs.utcnow()


def csr(names, key=None, *, common_names=()) -> str:
    """A CSR for *names* (SANs); its subject carries *common_names* as CNs (none by default, as Linkerd's proxy)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    b = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def authority(anchor, issuer):
    return make_authority(anchor, issuer)


def certify(authority, *, identity=WEB, reviewed=WEB_SA, csr_pem=None, now=None, monotonic=0.0):
    now = NOW if now is None else now
    return authority.certify(identity=identity, reviewed=reviewed, csr_pem=csr_pem or csr([x509.DNSName(WEB)]),
                             now=now, monotonic=monotonic)


def test_good_csr_gets_a_backdated_24h_leaf_for_exactly_that_name(authority, anchor, issuer):
    result = certify(authority)
    assert isinstance(result, service.Certified)
    leaf = x509.load_pem_x509_certificate(result.leaf_pem.encode())
    info = certs.describe(leaf)
    assert info.dns_names == (WEB,)
    assert info.not_before == (NOW - dt.timedelta(seconds=20)).replace(microsecond=0)
    assert info.not_after - info.not_before == dt.timedelta(hours=24, seconds=20)
    certs.verify_chain([leaf, issuer.certificate], [anchor.certificate], source="leaf")


@pytest.mark.parametrize("names, status, reason", [
    ([x509.DNSName("db.shop.serviceaccount.identity.meshctl.cluster.local")], 403, "but the token is for"),
    ([x509.DNSName(WEB), x509.DNSName("extra.example")], 403, "exactly one DNS name"),
    ([x509.DNSName(WEB), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))], 403, "exactly one DNS name"),
    ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/web")], 403, "exactly one DNS name"),
    ([], 403, "no subjectAltName"),
    ([x509.DNSName("web.shop.serviceaccount.identity.meshctl.other.domain")], 403, "but the token is for"),
])
def test_csr_names_other_than_the_tokens_identity_are_refused(authority, names, status, reason):
    result = certify(authority, csr_pem=csr(names))
    assert isinstance(result, service.Refusal) and result.status == status and reason in result.reason


def test_token_for_another_service_account_is_refused(authority):
    result = certify(authority, reviewed=ServiceAccountRef("shop", "db"))
    assert isinstance(result, service.Refusal) and result.status == 403
    assert "db.shop.serviceaccount" in result.reason


def test_rejected_token_and_mismatched_identity_field_are_refused(authority):
    r = certify(authority, reviewed=TokenRejected("token expired"))
    assert (r.status, r.reason) == (403, "token rejected: token expired")
    r = certify(authority, identity="db.shop.serviceaccount.identity.meshctl.cluster.local")
    assert r.status == 403 and "requested identity" in r.reason


def test_malformed_and_non_p256_csrs_are_refused(authority):
    assert certify(authority, csr_pem="not a csr").status == 400
    rsa_csr = csr([x509.DNSName(WEB)], key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert "P-256" in certify(authority, csr_pem=rsa_csr).reason


def test_expired_issuer_refuses_everything(anchor, issuer):
    authority = make_authority(anchor, issuer)
    late = authority.issuer.not_after + dt.timedelta(seconds=1)
    r = certify(authority, now=late)
    assert r.status == 503 and "issuer certificate expired" in r.reason and r.retry_after


def test_issuance_is_rate_limited_per_identity(anchor, issuer):
    authority = make_authority(anchor, issuer, limiter=service.RateLimiter(burst=2, per_second=0.5))
    assert isinstance(certify(authority, monotonic=0.0), service.Certified)
    assert isinstance(certify(authority, monotonic=0.0), service.Certified)
    limited = certify(authority, monotonic=0.1)
    assert limited.status == 429 and 1.5 < limited.retry_after <= 2.0
    # another identity has its own bucket
    other = certify(authority, identity=WEB.replace("web", "db"), reviewed=ServiceAccountRef("shop", "db"),
                    csr_pem=csr([x509.DNSName(WEB.replace("web", "db"))]), monotonic=0.1)
    assert isinstance(other, service.Certified)
    assert isinstance(certify(authority, monotonic=2.2), service.Certified)


# --- the local token registry --------------------------------------------------------

def test_registry_refuses_unknown_wrong_audience_and_expired_tokens(tmp_path):
    path = str(tmp_path / "tokens.json")
    good = tokens.add_token(path, namespace="shop", service_account="web")
    wrong_aud = tokens.add_token(path, namespace="shop", service_account="web", audience="kubernetes.default.svc")
    expired = tokens.add_token(path, namespace="shop", service_account="web", ttl=dt.timedelta(seconds=-1))
    reg = tokens.LocalTokenRegistry(path)
    assert reg.review(good) == ServiceAccountRef("shop", "web")
    assert reg.review(wrong_aud) == TokenRejected("token audience 'kubernetes.default.svc' is not 'identity.meshctl.io'")
    assert reg.review(expired) == TokenRejected("token expired")
    assert reg.review(good + "x") == TokenRejected("token not recognised")
    # a token added while the reviewer runs is seen (the demo meshes pods as it goes)
    later = tokens.add_token(path, namespace="shop", service_account="db")
    assert reg.review(later) == ServiceAccountRef("shop", "db")


@pytest.mark.parametrize("text, message", [
    ("tokens: 3", "expected a mapping with a 'tokens' list"),
    ('{"tokens": [{"token": "a", "namespace": "shop", "serviceAccount": "web"}]}', r"tokens\[1\]: expires: required"),
    ('{"tokens": [{"token": "a", "namespace": "Shop!", "serviceAccount": "web", "expires": "2030-01-01T00:00:00Z"}]}',
     r"tokens\[1\]: namespace: not a valid"),
    ('{"tokens": [{"token": "a", "namespace": "s", "serviceAccount": "w", "expires": "soon"}]}',
     r"tokens\[1\]: expires: expected an RFC 3339"),
    ("{{", "not YAML or JSON"),
])
def test_bad_registry_files_name_the_entry(tmp_path, text, message):
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        tokens.LocalTokenRegistry(str(path))


# --- over the wire: the proxy's client against the real service, TLS on loopback --------

def test_proxy_gets_certified_over_tls_and_refusals_carry_the_reason(tmp_path, anchor, issuer):
    from meshctl_proxy.identity.certificates import CertifyError, IdentityManager

    registry = str(tmp_path / "tokens.json")
    web_token = tokens.add_token(registry, namespace="shop", service_account="web")
    db_token = tokens.add_token(registry, namespace="shop", service_account="db")

    async def main():
        async with running_service(make_authority(anchor, issuer), registry) as (server, _, port):
            mgr = IdentityManager(identity_settings(tmp_path, anchor, port, web_token, name=WEB))
            assert not mgr.is_ready()
            creds = await mgr.refresh()
            assert mgr.is_ready() and creds.name == WEB
            assert creds.not_after - creds.not_before == pytest.approx(24 * 3600 + 20, abs=2)
            # the certificate (never the key) is kept for `meshctl identity show`
            assert (tmp_path / "id-web" / "certificate.crt").read_text() == creds.chain_pem
            assert not any("PRIVATE KEY" in p.read_text() for p in (tmp_path / "id-web").iterdir())

            # a proxy holding db's token asking to be web is refused with the reason
            thief = IdentityManager(identity_settings(tmp_path, anchor, port, db_token, name=WEB))
            with pytest.raises(CertifyError, match="403.*but the token is for 'db.shop"):
                await thief.refresh()
            assert not thief.is_ready()

            # the proxy checks the service's identity itself: expecting another name fails
            wary = IdentityManager(identity_settings(tmp_path, anchor, port, web_token, name=WEB,
                                                     svc_name="impostor.meshctl.serviceaccount.identity.meshctl.cluster.local"))
            with pytest.raises(Exception, match="peer identity is '" + SVC_NAME):
                await wary.refresh()
            assert (server.issued, server.refused) == (1, 1)

    asyncio.run(main())


def test_service_answers_bad_requests_with_json_errors(tmp_path, anchor, issuer):
    from meshctl_proxy.identity import tls_contexts
    from meshctl_proxy.identity.certificates import post_json

    registry = str(tmp_path / "tokens.json")
    tokens.add_token(registry, namespace="shop", service_account="web")

    async def main():
        async with running_service(make_authority(anchor, issuer), registry) as (_, host, port):
            ctx = tls_contexts.client_context(trust_anchors_pem=anchor.cert_pem)
            status, _, body = await post_json(host, port, "/v1/certify", b"{", ssl_context=ctx, server_identity=SVC_NAME)
            assert status == 400 and "JSON" in json.loads(body)["error"]
            status, _, body = await post_json(host, port, "/v2/other", b"{}", ssl_context=ctx, server_identity=SVC_NAME)
            assert status == 404

    asyncio.run(main())
