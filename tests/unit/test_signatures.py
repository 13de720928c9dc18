"""Webhook signatures: ours (Stripe-style, HMAC-SHA256 over "<t>.<body>") and Twilio's (HMAC-SHA1 over
the URL and the sorted POST parameters). Pure, no I/O."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain.signatures import (
    SignatureError,
    parse_header,
    sign,
    twilio_signature,
    verify,
    verify_twilio,
)

SECRET = "whsec_test_0123456789"
BODY = '{"notification_key":"k1","amount_minor":125000,"customer":"Ayşe"}'.encode()
T = 1_773_136_800  # 2026-03-10 10:00 UTC


def _reason(exc_info: pytest.ExceptionInfo[SignatureError]) -> str:
    return exc_info.value.reason


class TestSign:
    def test_header_is_t_and_a_hex_hmac_of_timestamp_dot_body(self):
        expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
        assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"

    def test_several_secrets_give_one_v1_each_in_order(self):
        header = sign([SECRET, "whsec_new_secret"], BODY, T)
        t, sigs = parse_header(header)
        assert t == T and len(sigs) == 2
        assert sigs[0] == sign(SECRET, BODY, T).split("v1=")[1]
        assert sigs[1] == sign("whsec_new_secret", BODY, T).split("v1=")[1]

    @pytest.mark.parametrize("bad", [-1, 1.5, True, "1773136800", 10**12])
    def test_timestamp_must_be_unix_seconds(self, bad):
        with pytest.raises(ValueError):
            sign(SECRET, BODY, bad)

    def test_empty_secret_is_refused(self):
        with pytest.raises(ValueError):
            sign("", BODY, T)


class TestVerify:
    def test_valid_signature_returns_its_timestamp(self):
        assert verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + 10) == T

    def test_forged_body_is_a_mismatch(self):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, sign(SECRET, BODY, T), BODY.replace(b"125000", b"1"), now=T)
        assert _reason(exc) == "mismatch"

    def test_wrong_secret_is_a_mismatch(self):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, sign("whsec_attacker_guess", BODY, T), BODY, now=T)
        assert _reason(exc) == "mismatch"

    def test_moved_timestamp_is_a_mismatch(self):
        """Re-dating a captured request to make it fresh breaks the signature: t is signed."""
        header = sign(SECRET, BODY, T).replace(f"t={T}", f"t={T + 3600}")
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, header, BODY, now=T + 3600)
        assert _reason(exc) == "mismatch"

    def test_stale_beyond_tolerance(self):
        header = sign(SECRET, BODY, T)
        assert verify(SECRET, header, BODY, now=T + 300) == T  # the edge is still inside
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, header, BODY, now=T + 301)
        assert _reason(exc) == "stale"

    def test_future_beyond_tolerance(self):
        header = sign(SECRET, BODY, T)
        assert verify(SECRET, header, BODY, now=T - 300) == T
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, header, BODY, now=T - 301)
        assert _reason(exc) == "future"

    def test_custom_tolerance(self):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + 61, tolerance_seconds=60)
        assert _reason(exc) == "stale"

    def test_forged_and_stale_reports_the_forgery(self):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, sign("other-secret", BODY, T), BODY, now=T + 10_000)
        assert _reason(exc) == "mismatch"

    @pytest.mark.parametrize("header", [None, "", "   "])
    def test_missing_header(self, header):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, header, BODY, now=T)
        assert _reason(exc) == "missing"

    @pytest.mark.parametrize("header", [
        "garbage",
        f"t={T}",  # no signature
        "v1=" + "a" * 64,  # no timestamp
        f"t=abc,v1={'a' * 64}",
        f"t=-5,v1={'a' * 64}",
        f"t={T},t={T},v1={'a' * 64}",
        f"t={T},v1=nothex",
        f"t={T},v1={'a' * 63}",
        f"t={T},v1=",
        f"t={T},,v1={'a' * 64}",
        f"t=١٢٣,v1={'a' * 64}",  # Arabic-Indic digits: str.isdigit() says yes, we say no
        f"t={'9' * 13},v1={'a' * 64}",  # more digits than any timestamp has
    ])
    def test_malformed_header(self, header):
        with pytest.raises(SignatureError) as exc:
            verify(SECRET, header, BODY, now=T)
        assert _reason(exc) == "malformed"

    def test_unknown_schemes_are_ignored_and_spaces_tolerated(self):
        v1 = sign(SECRET, BODY, T).split(",")[1]
        assert verify(SECRET, f"t={T}, v0=deadbeef, {v1}", BODY, now=T) == T

    def test_uppercase_hex_is_accepted(self):
        t, v1 = sign(SECRET, BODY, T).split(",")
        assert verify(SECRET, f"{t},{v1.upper().replace('V1=', 'v1=')}", BODY, now=T) == T


class TestRotation:
    OLD, NEW = "whsec_old_secret", "whsec_new_secret"

    def test_sender_signing_with_both_is_accepted_by_either_receiver(self):
        header = sign([self.OLD, self.NEW], BODY, T)
        assert verify(self.OLD, header, BODY, now=T) == T
        assert verify(self.NEW, header, BODY, now=T) == T

    def test_receiver_knowing_both_accepts_a_sender_with_either(self):
        assert verify([self.OLD, self.NEW], sign(self.OLD, BODY, T), BODY, now=T) == T
        assert verify([self.OLD, self.NEW], sign(self.NEW, BODY, T), BODY, now=T) == T

    def test_retired_secret_is_refused(self):
        with pytest.raises(SignatureError) as exc:
            verify(self.NEW, sign(self.OLD, BODY, T), BODY, now=T)
        assert _reason(exc) == "mismatch"

    def test_a_forged_entry_beside_a_valid_one_does_not_hurt(self):
        header = sign(SECRET, BODY, T) + ",v1=" + "0" * 64
        assert verify(SECRET, header, BODY, now=T) == T


@given(body=st.binary(max_size=512), secret=st.text(min_size=1, max_size=40), t=st.integers(0, 10**12 - 1),
       flip=st.integers(0, 511))
def test_round_trip_and_any_flipped_byte_is_caught(body, secret, t, flip):
    header = sign(secret, body, t)
    assert verify(secret, header, body, now=t) == t
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
        with pytest.raises(SignatureError):
            verify(secret, header, tampered, now=t)


class TestTwilio:
    # The example of Twilio's own request-validator tests (twilio-python tests/unit/test_request_validator.py).
    TOKEN = "12345"
    URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
    PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
              "Caller": "+14158675309"}

    def test_twilio_documented_vector(self):
        assert twilio_signature(self.TOKEN, self.URL, self.PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="

    def test_twilio_security_page_vector(self):
        """The example of Twilio's "Validating requests" documentation page."""
        params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
                  "From": "+12349013030", "To": "+18005551212"}
        assert twilio_signature(self.TOKEN, self.URL, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

    def test_repeated_parameter_signs_each_value_sorted(self):
        params = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]}
        assert twilio_signature(self.TOKEN, self.URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="

    def test_parameter_order_does_not_matter(self):
        reordered = dict(reversed(list(self.PARAMS.items())))
        assert twilio_signature(self.TOKEN, self.URL, reordered) == twilio_signature(self.TOKEN, self.URL,
                                                                                      self.PARAMS)

    def test_verify_accepts_the_vector(self):
        verify_twilio(self.TOKEN, self.URL, self.PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")

    def test_verify_accepts_the_default_port_either_way(self):
        """Twilio's vectors for the same request with the port a proxy may add or drop."""
        verify_twilio(self.TOKEN, self.URL, self.PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")  # signed with :443
        verify_twilio(self.TOKEN, self.URL.replace(".com", ".com:443"), self.PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        http = self.URL.replace("https", "http")
        verify_twilio(self.TOKEN, http, self.PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")  # signed with :80

    def test_a_non_default_port_is_part_of_the_url(self):
        url = "http://127.0.0.1:8004/v1/webhooks/sms/status"
        signature = twilio_signature(self.TOKEN, url, self.PARAMS)
        verify_twilio(self.TOKEN, url, self.PARAMS, signature)
        with pytest.raises(SignatureError):
            verify_twilio(self.TOKEN, "http://127.0.0.1/v1/webhooks/sms/status", self.PARAMS, signature)

    @pytest.mark.parametrize("change", ["param", "added", "url", "token"])
    def test_forgeries_are_mismatches(self, change):
        params, url, token = dict(self.PARAMS), self.URL, self.TOKEN
        if change == "param":
            params["Digits"] = "9999"
        elif change == "added":
            params["MessageStatus"] = "delivered"
        elif change == "url":
            url = self.URL.replace("foo=1", "foo=2")
        else:
            token = "54321"
        with pytest.raises(SignatureError) as exc:
            verify_twilio(token, url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        assert _reason(exc) == "mismatch"

    @pytest.mark.parametrize("signature", [None, "", " "])
    def test_missing_signature(self, signature):
        with pytest.raises(SignatureError) as exc:
            verify_twilio(self.TOKEN, self.URL, self.PARAMS, signature)
        assert _reason(exc) == "missing"

    def test_unicode_values_are_signed_as_utf8(self):
        params = {"Body": "Ödeme hatırlatması ₺", "To": "+905321234567"}
        expected = base64.b64encode(hmac.new(
            b"tok", ("https://x.test/cb" + "BodyÖdeme hatırlatması ₺To+905321234567").encode(), hashlib.sha1
        ).digest()).decode()
        assert twilio_signature("tok", "https://x.test/cb", params) == expected
