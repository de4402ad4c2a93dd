"""Signing pinned to the verified vectors (copied from the project's exchange reference)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from guardian.kraken.signing import (
    NonceSource,
    encode_params,
    format_value,
    nonce_source_for,
    post_data_candidates,
    sign,
    signed_path,
    verify,
)

SECRET = base64.b64decode(
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
)
assert bytes(range(64)) == SECRET

ORDER = "limitPrice=50000&orderType=lmt&side=buy&size=1&symbol=PF_XBTUSD"
BATCH = (
    "json=%7B%22batchOrder%22%3A%5B%7B%22order%22%3A%22send%22%2C%22order_tag%22%3A%221%22%2C"
    "%22orderType%22%3A%22lmt%22%2C%22symbol%22%3A%22PF_XBTUSD%22%2C%22side%22%3A%22buy%22%2C"
    "%22size%22%3A1%2C%22limitPrice%22%3A50000%2C%22reduceOnly%22%3Afalse%7D%5D%7D"
)

VECTORS = [
    (
        ORDER,
        "1700000000000",
        "/api/v3/sendorder",
        "UyfAj34thjj0Qi3xX+bSh6XH/Z6rnsB09aeT8G2Jl+lZze02NLyzJg5XSPcWsubC4/X14aHdisnB49zBMQBYBA==",
    ),
    (
        ORDER,
        None,
        "/api/v3/sendorder",
        "QNVmSDKc8lNTHYO/jDC1pFYLRbmHkm7lNEKxRJbgOr1NcU1qw/M+WaDhDzTlg2FR0Cd0++bzACWnq4XWgYXbdQ==",
    ),
    (
        "timeout=60",
        "1700000000001",
        "/api/v3/cancelallordersafter",
        "b0ir76/TjsNpJE/mxaqaEmldl0vReDKXWJc7vjdYwY4VMcgEMbo8CNpAhnOQt4h7FxQJanEZuuOgt/eT1JpHRg==",
    ),
    (
        "timeout=0",
        None,
        "/api/v3/cancelallordersafter",
        "AyjY70mLt0UHGCOMQbx1yz0a7OB9qjM1Ri0WwCFR3hAbbrnJTkwTuPZrg66i4CAJjVVjOMTw5TxGvPCfShHZzw==",
    ),
    (
        "",
        "1700000000002",
        "/api/v3/accounts",
        "XafrCbFAAg3q3niRgjDYiQIq7Jbd+e0G5/x4cGSvtDHj6fGlx2hIU4qz651o+Y0NINGmUyKaN95baVmROuIN2Q==",
    ),
    (
        "",
        None,
        "/api/v3/openorders",
        "01NpmRljuNFOYCFDW+OXrtHSByZQJbicy27eoNrFl8w05mo30EzFYxJjL+yj7ul6RPZy5zHB0z3sIuPz2gycng==",
    ),
    (
        "order_id=00000000-0000-0000-0000-000000000001",
        "1700000000003",
        "/api/v3/cancelorder",
        "OLkPT1R1VXavXkhPpDGUCUJN00jt+YfeS0T28ZRjxF7uNo27j08GppABmTIImpqJ5ylcBfkiQIPGd8IIjTsL8w==",
    ),
    (
        "lastFillTime=2020-07-21T12%3A41%3A52.790Z",
        "1700000000005",
        "/api/v3/fills",
        "BRmf0YrRVm/17v4tpYC7LC60W7MeQPjX4+3/5DW2vu8mT4UsXnHoQC3KJ4eL6fOOML8RWz9vf18bz0ZG7X043A==",
    ),
    (
        BATCH,
        "1700000000004",
        "/api/v3/batchorder",
        "amWfYo60XJG55M7Gtc+wSTIQo0kC8qr0IlL09xph1naagh8TRdrzB/7zCuajHgZSUrrDq7w/RfWATmEbHjYkdw==",
    ),
]


@pytest.mark.parametrize(("post_data", "nonce", "path", "expected"), VECTORS)
def test_sign_matches_reference_vectors(post_data: str, nonce: str | None, path: str, expected: str) -> None:
    assert sign(SECRET, post_data, nonce, path) == expected
    # The same request named by its full URL path signs identically: /derivatives is stripped.
    assert sign(SECRET, post_data, nonce, "/derivatives" + path) == expected


def test_sign_matches_python_kraken_sdk_published_vector() -> None:
    key = base64.b64decode("cHl0aG9uLWtyYWtlbi1zZGsgdW5pdC10ZXN0IHNlY3JldCB2YWx1ZQ==")
    got = sign(key, "orderType=lmt&symbol=PI_XBTUSD", "1616492376594", "/derivatives/api/v3/sendorder")
    assert got == "Txi+gJVXe3EN1brXYQ46FuV6UVtEVSKhc6dYMhPb7a/HXZLGvO6m9UUg+KVKqhLxrbllOPI7qRkHYmPfJZZSGA=="


def test_signed_path_strips_only_the_derivatives_prefix() -> None:
    assert signed_path("/derivatives/api/v3/sendorder") == "/api/v3/sendorder"
    assert signed_path("/api/history/v2/orders") == "/api/history/v2/orders"
    assert signed_path("/derivativesx/api") == "/derivativesx/api"


def test_encode_params_reproduces_the_batch_vector_body() -> None:
    doc = {
        "batchOrder": [
            {
                "order": "send",
                "order_tag": "1",
                "orderType": "lmt",
                "symbol": "PF_XBTUSD",
                "side": "buy",
                "size": 1,
                "limitPrice": 50000,
                "reduceOnly": False,
            }
        ]
    }
    assert encode_params({"json": json.dumps(doc, separators=(",", ":"))}) == BATCH


def test_encode_params_uses_percent_twenty_and_encodes_reserved_characters() -> None:
    assert encode_params({"a": "x y", "t": "2020-07-21T12:41:52.790Z"}) == (
        "a=x%20y&t=2020-07-21T12%3A41%3A52.790Z"
    )
    assert encode_params([("s", "a/b&c=d+e")]) == "s=a%2Fb%26c%3Dd%2Be"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (1, "1"),
        (0.00001, "0.00001"),
        (50000.0, "50000"),
        (1.5, "1.5"),
        ("PF_XBTUSD", "PF_XBTUSD"),
    ],
)
def test_format_value_never_uses_exponents_or_python_booleans(value: object, text: str) -> None:
    assert format_value(value) == text  # type: ignore[arg-type]


def test_verify_accepts_the_right_signature_and_rejects_everything_else() -> None:
    post_data, nonce, path, good = VECTORS[0]
    assert verify(SECRET, [post_data], nonce, path, good)
    assert not verify(SECRET, [post_data], nonce, path, None)
    assert not verify(SECRET, [post_data], nonce, path, "")
    assert not verify(SECRET, [post_data], nonce, path, good[:-4] + "AAA=")
    assert not verify(SECRET, [post_data + "&x=1"], nonce, path, good)
    assert not verify(SECRET, [post_data], "1700000000009", path, good)
    assert not verify(SECRET, [post_data], nonce, "/api/v3/editorder", good)
    assert not verify(bytes(64), [post_data], nonce, path, good)


def test_verify_accepts_query_then_body_with_or_without_separator() -> None:
    query, body = "symbol=PF_XBTUSD", "size=1"
    for signed in ("symbol=PF_XBTUSDsize=1", "symbol=PF_XBTUSD&size=1"):
        authent = sign(SECRET, signed, "5", "/api/v3/sendorder")
        assert verify(SECRET, post_data_candidates(query, body), "5", "/api/v3/sendorder", authent)
    assert post_data_candidates("", "a=1") == ["a=1"]
    assert post_data_candidates("a=1", "") == ["a=1"]
    assert post_data_candidates("", "") == [""]


def test_nonce_source_is_strictly_increasing_even_when_the_clock_stalls_or_steps_back() -> None:
    ticks = iter([1000, 1000, 1000, 999, 2000, 1500])
    source = NonceSource(lambda: next(ticks))
    assert [source() for _ in range(6)] == ["1000", "1001", "1002", "1003", "2000", "2001"]


def test_nonce_source_starts_from_the_wall_clock_so_a_restart_never_goes_back() -> None:
    first = int(NonceSource()())
    second = int(NonceSource()())
    assert second >= first
    assert first > 1_600_000_000_000  # milliseconds since the epoch, as Kraken suggests


def test_nonce_units_set_the_scale_so_a_key_used_with_larger_nonces_can_be_taken_over() -> None:
    sdk_style = int(time.time() * 100_000_000)  # python-kraken-sdk's nonces: 18 digits
    assert len(NonceSource(unit="microseconds")()) == 16
    nanos = NonceSource(unit="nanoseconds")()
    assert len(nanos) == 19
    assert int(nanos) > sdk_style > int(NonceSource()())
    with pytest.raises(ValueError, match="nonce unit must be one of"):
        NonceSource(unit="seconds")


def test_one_api_key_cannot_have_two_nonce_units() -> None:
    nonce_source_for("key-units", "nanoseconds")
    assert nonce_source_for("key-units", "nanoseconds").unit == "nanoseconds"
    with pytest.raises(ValueError, match="two nonce units"):
        nonce_source_for("key-units")


def test_one_nonce_sequence_per_api_key() -> None:
    assert nonce_source_for("key-a") is nonce_source_for("key-a")
    assert nonce_source_for("key-a") is not nonce_source_for("key-b")
    a, b = nonce_source_for("key-a"), nonce_source_for("key-a")
    drawn = [int(source()) for source in (a, b, a, b)]
    assert drawn == sorted(set(drawn))
