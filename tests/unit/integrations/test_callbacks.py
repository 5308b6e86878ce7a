"""Coop's callbacks: the signature check against every forgery, the key in each form Coop shows it, and
callback bodies of every wrong shape."""

from __future__ import annotations

import base64
import textwrap

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from streams.errors import ConfigError
from streams.integrations.callbacks import load_verifier, review_event
from tests.fake_coop import FakeCoop

COOP = FakeCoop()
BODY = FakeCoop.callback_body("e1", policies=[("p1", "Spam")])


def test_coops_one_line_pem_a_wrapped_pem_and_a_file_all_verify(tmp_path) -> None:
    one_line = COOP.public_pem
    b64 = one_line.splitlines()[1]
    wrapped = "-----BEGIN PUBLIC KEY-----\n" + "\n".join(textwrap.wrap(b64, 64)) + "\n-----END PUBLIC KEY-----\n"
    path = tmp_path / "coop.pem"
    path.write_text(wrapped)
    for value in (one_line, wrapped, str(path)):
        assert load_verifier(value)(BODY, COOP.sign(BODY))


@pytest.mark.parametrize("value,match", [
    ("not a key and not a file", "reading it as a path failed"),
    ("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----", "not a readable public key"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "no '-----BEGIN PUBLIC KEY-----'"),
])
def test_a_wrong_key_setting_is_a_clear_error(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_verifier(value)


def test_a_key_that_is_not_rsa_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ConfigError, match="RSA"):
        load_verifier(pem)


def test_every_forgery_fails_verification() -> None:
    verify = load_verifier(COOP.public_pem)
    good = COOP.sign(BODY)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raw = base64.b64decode(good)
    forgeries = [None, "", " ", "%%%", good[:-4], base64.b64encode(raw[:-1]).decode(),
                 base64.b64encode(bytes([raw[0] ^ 1]) + raw[1:]).decode(), COOP.sign(BODY, other),
                 COOP.sign(BODY + b" ")]
    assert verify(BODY, good)
    for forged in forgeries:
        assert not verify(BODY, forged), forged
    assert not verify(BODY + b" ", good) and not verify(BODY.replace(b"e1", b"e2"), good)


def test_a_review_event_from_coops_body() -> None:
    review = review_event(BODY)
    assert (review.event_id, review.action, review.actor) == ("e1", "act-remove", "mod@example.com")
    assert [(p.id, p.name, p.penalty) for p in review.policies] == [("p1", "Spam", "MEDIUM")]
    assert review.review_id == review_event(BODY).review_id != review_event(
        FakeCoop.callback_body("e1", policies=[])).review_id


@pytest.mark.parametrize("doc,match", [
    (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (orjson.dumps({"action": {"id": "a"}}), "item.id"),
    (orjson.dumps({"item": {"id": ""}, "action": {"id": "a"}}), "item.id"),
    (orjson.dumps({"item": {"id": 5}, "action": {"id": "a"}}), "item.id"),
    (orjson.dumps({"item": {"id": "e"}, "action": "a"}), "action.id"),
    (orjson.dumps({"item": {"id": "e"}, "action": {"id": "a"}, "policies": "spam"}), "list of objects"),
    (orjson.dumps({"item": {"id": "e"}, "action": {"id": "a"}, "policies": [{"id": "p"}]}), "id and a name"),
])
def test_signed_bodies_of_the_wrong_shape_are_refused_with_why(doc: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        review_event(doc)
