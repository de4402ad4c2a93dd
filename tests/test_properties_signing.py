"""Properties of the signature verifier and the nonce checks (issue 6), with hypothesis.

- `sign`/`verify` (guardian.kraken.signing): any secret, any post data (arbitrary unicode, `&`, `=`, `%`,
  `+`, empty), any nonce and path: the right signature verifies, and a change to one byte of the post
  data, the nonce, the path, the key or the Authent does not.
- `LocalKeys.authenticate` (guardian.gateway.auth), the gateway's front door: a correctly signed request
  is let in with its bot's identity; anything else is a `Refusal` with the right code and never another
  exception (that would be a 500), whatever text the headers hold.
- Nonces in each unit clients use (milliseconds, python-kraken-sdk's 18 digits, microseconds,
  nanoseconds) are accepted while increasing; a repeat is `nonceDuplicate`, a stale one
  `nonceBelowThreshold`, and a refused request never uses up its nonce.

Deterministic: every test uses this module's settings (derandomize, no example database).
"""

from __future__ import annotations

import base64
import string
import time
from urllib.parse import quote, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardian.config import AccountConfig, ClientConfig
from guardian.gateway.auth import MAX_NONCE_DIGITS, LocalKeys
from guardian.gateway.refusal import Refusal
from guardian.kraken.endpoints import ENDPOINTS, Endpoint, Permission, endpoint
from guardian.kraken.nonces import RECENT_KEPT, NonceWindow, tolerance_for
from guardian.kraken.signing import SIGNATURE_LENGTH, post_data_candidates, sign, signed_path, verify
from guardian.secret import ApiSecret

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)
FEW = settings(SETTINGS, max_examples=60)

# ---- strategies ---------------------------------------------------------------------------------------
# Text a client may send: any unicode a UTF-8 body can carry (no lone surrogates), plus the characters
# that matter to URL encoding, often.
UNICODE = st.text(st.characters(codec="utf-8"), max_size=40)
FORMISH = st.text(st.sampled_from("&=%+ ab1-_.~:/?#[]{}\"'\\é€😀\x00\n"), max_size=40)
PAIRS = st.lists(st.tuples(UNICODE | FORMISH, UNICODE | FORMISH), max_size=6)


@st.composite
def post_data(draw: st.DrawFn) -> str:
    """What a client signs: raw text, or parameters URL-encoded the ways real clients do it."""
    pairs = draw(PAIRS)
    return draw(
        st.sampled_from(
            [
                urlencode(pairs, quote_via=quote),  # ccxt and guardian: %20
                urlencode(pairs),  # python-kraken-sdk: +
                "&".join(f"{k}={v}" for k, v in pairs),  # not encoded at all
            ]
        )
        | UNICODE
        | FORMISH
    )


SECRETS = st.binary(min_size=1, max_size=100)
NONCES = st.none() | st.integers(min_value=0, max_value=10**MAX_NONCE_DIGITS - 1).map(str)
PATHS = (
    st.sampled_from([e.path for e in ENDPOINTS])
    | st.text(st.sampled_from(string.ascii_letters + string.digits + "/_-.{}"), max_size=40).map(
        lambda p: "/" + p
    )
    | UNICODE
)
BASE64_CHARS = string.ascii_letters + string.digits + "+/="
# An Authent header as the server may see it: aiohttp decodes header bytes as UTF-8 with
# surrogateescape, so undecodable bytes arrive as lone surrogates.
HEADER_TEXT = st.binary(max_size=120).map(lambda b: b.decode("utf-8", "surrogateescape")) | UNICODE


def flip_one_byte(data: bytes, position: int, delta: int) -> bytes:
    """`data` with the byte at `position` (modulo its length) changed by `delta` (1..255)."""
    index = position % len(data)
    return data[:index] + bytes([(data[index] + delta) % 256]) + data[index + 1 :]


# ---- sign and verify ------------------------------------------------------------------------------------


@SETTINGS
@given(key=SECRETS, body=post_data(), nonce=NONCES, path=PATHS)
@example(key=b"\x00", body="", nonce=None, path="/derivatives/api/v3/accounts")
@example(key=b"k", body="a=%ZZ&b=+&=&&", nonce="0", path="/derivatives/")
def test_a_correct_signature_verifies_for_any_secret_body_nonce_and_path(
    key: bytes, body: str, nonce: str | None, path: str
) -> None:
    authent = sign(key, body, nonce, path)

    assert len(authent) == SIGNATURE_LENGTH
    assert len(base64.b64decode(authent, validate=True)) == 64
    assert verify(key, [body], nonce, path, authent)
    assert verify(key, [body.encode()], nonce, path, authent)  # the bytes received, as bytes
    assert sign(key, body.encode(), nonce, path) == authent
    if path.startswith("/api/"):
        assert sign(key, body, nonce, "/derivatives" + path) == authent


@SETTINGS
@given(
    key=SECRETS,
    body=post_data(),
    nonce=NONCES,
    path=PATHS,
    position=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
)
def test_one_changed_byte_of_the_post_data_fails_verification(
    key: bytes, body: str, nonce: str | None, path: str, position: int, delta: int
) -> None:
    authent = sign(key, body, nonce, path)
    sent = body.encode() or b"x"  # the empty body's one change is adding a byte
    tampered = flip_one_byte(sent, position, delta) if body else sent

    assert not verify(key, [tampered], nonce, path, authent)


@SETTINGS
@given(
    key=SECRETS,
    body=post_data(),
    nonce=NONCES,
    path=PATHS,
    position=st.integers(min_value=0),
    delta=st.integers(min_value=1, max_value=255),
)
def test_a_changed_key_nonce_or_path_fails_verification(
    key: bytes, body: str, nonce: str | None, path: str, position: int, delta: int
) -> None:
    authent = sign(key, body, nonce, path)

    assert not verify(flip_one_byte(key, position, delta), [body], nonce, path, authent)
    other_nonce = str(int(nonce) + 1 + position % 1000) if nonce is not None else "1"
    assert not verify(key, [body], other_nonce, path, authent)
    if nonce is not None:
        assert not verify(key, [body], None, path, authent)  # the nonce is part of what is signed
    index = position % len(path) if path else 0
    other_path = path[:index] + chr((ord(path[index]) + delta) % 0xD800 if path else 0x2F) + path[index + 1 :]
    if signed_path(other_path) != signed_path(path):
        assert not verify(key, [body], nonce, other_path, authent)


@SETTINGS
@given(
    key=SECRETS,
    body=post_data(),
    nonce=NONCES,
    position=st.integers(min_value=0, max_value=SIGNATURE_LENGTH - 1),
    replacement=st.sampled_from(BASE64_CHARS),
)
def test_a_changed_character_of_the_authent_fails_verification_even_in_base64_padding_bits(
    key: bytes, body: str, nonce: str | None, position: int, replacement: str
) -> None:
    """`...A==` and `...B==` decode to the same bytes: a verifier that compared decoded bytes would let
    a changed header through. guardian compares the text."""
    path = "/derivatives/api/v3/sendorder"
    authent = sign(key, body, nonce, path)
    changed = authent[:position] + replacement + authent[position + 1 :]
    if changed != authent:
        assert not verify(key, [body], nonce, path, changed)


@SETTINGS
@given(key=SECRETS, body=post_data(), authent=HEADER_TEXT)
@example(key=b"k", body="", authent="\udcff" * SIGNATURE_LENGTH)  # was: UnicodeEncodeError (a 500)
@example(key=b"k", body="", authent="é" * SIGNATURE_LENGTH)
@example(key=b"k", body="", authent="=" * SIGNATURE_LENGTH)
def test_an_authent_that_is_not_a_signature_is_refused_without_raising(
    key: bytes, body: str, authent: str
) -> None:
    assert verify(key, [body], None, "/derivatives/api/v3/sendorder", authent) is False


@SETTINGS
@given(query=post_data(), body=post_data(), key=SECRETS, nonce=NONCES)
def test_query_and_body_verify_whichever_way_the_client_joined_them(
    query: str, body: str, key: bytes, nonce: str | None
) -> None:
    path = "/derivatives/api/v3/sendorder"
    candidates = post_data_candidates(query, body)
    for signed in (query + body, query + "&" + body if query and body else query + body):
        assert verify(key, candidates, nonce, path, sign(key, signed, nonce, path))
    # Signing the body alone (dropping a query that was sent) is not one of them, unless it is the same.
    if query:
        alone = sign(key, body, nonce, path)
        assert verify(key, candidates, nonce, path, alone) == (body in candidates)


# ---- LocalKeys.authenticate -----------------------------------------------------------------------------
SENDORDER = endpoint("sendorder")
TRADE_ENDPOINTS = [e for e in ENDPOINTS if e.permission in (Permission.READ, Permission.TRADE)]
ALL = frozenset({Permission.READ, Permission.TRADE})


def local_keys(secret: bytes, permissions: frozenset[Permission] = ALL) -> LocalKeys:
    """Two accounts; the bot under test is `bot` of `hedge`, with `secret`."""
    decoy = ApiSecret(base64.b64encode(b"another bot, another secret").decode())
    bots = (
        ClientConfig("decoy", "decoy-key", decoy, ALL),
        ClientConfig("bot", "bot-key", ApiSecret(base64.b64encode(secret).decode()), permissions),
    )
    return LocalKeys(
        [
            AccountConfig("main", "exchange-key-1", decoy, clients=bots[:1]),
            AccountConfig("hedge", "exchange-key-2", decoy, clients=bots[1:]),
        ]
    )


def headers(secret: bytes, ep: Endpoint, signed: str, nonce: str | None) -> dict[str, str]:
    """The bot's headers for a request whose post data is `signed`."""
    sent = {"APIKey": "bot-key", "Authent": sign(secret, signed, nonce, ep.path)}
    if nonce is not None:
        sent["Nonce"] = nonce
    return sent


def refusal(keys: LocalKeys, sent: dict[str, str], ep: Endpoint, query: str, body: str) -> str | None:
    """The refusal code authenticate answers with, or None if it lets the request in."""
    try:
        caller = keys.authenticate(sent, ep, query, body)
    except Refusal as exc:
        return exc.code
    assert (caller.account, caller.bot) == ("hedge", "bot")
    return None


def now_nonce() -> str:
    return str(time.time_ns() // 1_000_000)


@SETTINGS
@given(secret=SECRETS, query=post_data(), body=post_data(), joined=st.booleans(), with_nonce=st.booleans())
def test_a_correctly_signed_request_is_let_in_as_its_bot(
    secret: bytes, query: str, body: str, joined: bool, with_nonce: bool
) -> None:
    signed = query + "&" + body if joined and query and body else query + body
    nonce = now_nonce() if with_nonce else None

    assert (
        refusal(local_keys(secret), headers(secret, SENDORDER, signed, nonce), SENDORDER, query, body) is None
    )


@SETTINGS
@given(
    secret=SECRETS,
    query=post_data(),
    body=post_data(),
    where=st.sampled_from(["query", "body", "nonce", "path", "key", "secret", "authent"]),
    position=st.integers(min_value=0),
    replacement=st.characters(codec="utf-8"),
)
def test_a_request_changed_anywhere_after_signing_is_refused_as_authentication_error(
    secret: bytes, query: str, body: str, where: str, position: int, replacement: str
) -> None:
    keys = local_keys(secret)
    nonce = now_nonce()
    sent = headers(secret, SENDORDER, query + body, nonce)
    ep = SENDORDER

    def changed(text: str) -> str:
        if not text:
            return replacement
        index = position % len(text)
        new = replacement if replacement != text[index] else chr((ord(replacement) + 1) % 0xD800)
        return text[:index] + new + text[index + 1 :]

    if where == "query":
        query = changed(query)
    elif where == "body":
        body = changed(body)
    elif where == "nonce":
        sent["Nonce"] = str(int(nonce) + 1 + position % 10_000)
    elif where == "path":
        ep = endpoint("editorder")
    elif where == "key":
        sent["APIKey"] = "decoy-key"  # a real key of another bot: its secret did not sign this
    elif where == "secret":
        sent["Authent"] = sign(flip_one_byte(secret, position, 1), query + body, nonce, ep.path)
    else:
        sent["Authent"] = changed(sent["Authent"])

    assert refusal(keys, sent, ep, query, body) == "authenticationError"
    # The refused request used up nothing: the genuine one, with the same nonce, is let in.
    genuine = headers(secret, SENDORDER, query + body, sent["Nonce"])
    assert refusal(keys, genuine, SENDORDER, query, body) is None


@SETTINGS
@given(
    secret=SECRETS,
    api_key=HEADER_TEXT,
    authent=HEADER_TEXT,
    nonce=st.none() | HEADER_TEXT,
    query=UNICODE,
    body=UNICODE,
    ep=st.sampled_from(ENDPOINTS),
)
@example(
    secret=b"k",
    api_key="bot-key",
    authent="\udcff" * SIGNATURE_LENGTH,
    nonce=None,
    query="",
    body="",
    ep=SENDORDER,
)
def test_arbitrary_headers_are_refused_as_authentication_error_and_never_raise_anything_else(
    secret: bytes, api_key: str, authent: str, nonce: str | None, query: str, body: str, ep: Endpoint
) -> None:
    sent = {"APIKey": api_key, "Authent": authent} | ({} if nonce is None else {"Nonce": nonce})

    assert refusal(local_keys(secret), sent, ep, query, body) == "authenticationError"


@SETTINGS
@given(secret=SECRETS, nonce=HEADER_TEXT)
@example(secret=b"k", nonce="\u00b9")  # isdigit() but int() refuses it: was a ValueError (a 500)
@example(secret=b"k", nonce="\u0661\u0662")  # Arabic-Indic 12: was accepted as the nonce 12
@example(secret=b"k", nonce="\uff11")  # fullwidth 1
@example(secret=b"k", nonce="9" * MAX_NONCE_DIGITS)
@example(secret=b"k", nonce="9" * (MAX_NONCE_DIGITS + 1))
@example(secret=b"k", nonce="")
def test_a_signed_nonce_is_accepted_only_as_ascii_digits(secret: bytes, nonce: str) -> None:
    """The Nonce is whatever the bot signed; guardian must read it as the number the bot meant, or refuse."""
    body = "size=1"
    keys = local_keys(secret)
    # The bot signs the bytes it sends; a header that arrived with lone surrogates was undecodable bytes.
    signed = body.encode() + nonce.encode("utf-8", "surrogateescape")
    sent = {"APIKey": "bot-key", "Authent": sign(secret, signed, None, SENDORDER.path), "Nonce": nonce}
    well_formed = nonce.isascii() and nonce.isdigit() and len(nonce) <= MAX_NONCE_DIGITS

    assert refusal(keys, sent, SENDORDER, "", body) == (None if well_formed else "authenticationError")


@FEW
@given(
    secret=SECRETS,
    permissions=st.sets(st.sampled_from(list(Permission))),
    ep=st.sampled_from(TRADE_ENDPOINTS),
)
def test_a_key_reaches_an_endpoint_only_with_the_permission_it_needs(
    secret: bytes, permissions: set[Permission], ep: Endpoint
) -> None:
    keys = local_keys(secret, frozenset(permissions))
    code = refusal(keys, headers(secret, ep, "", None), ep, "", "")

    assert code == (None if ep.permission in permissions else "permissionDenied")


# ---- nonces ---------------------------------------------------------------------------------------------
# Ticks per second of each scheme clients use; python-kraken-sdk's 18 digits are 1e8 per second.
UNITS = {"milliseconds": 10**3, "python-kraken-sdk": 10**8, "microseconds": 10**6, "nanoseconds": 10**9}


@FEW
@given(
    unit=st.sampled_from(sorted(UNITS)),
    steps=st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=12),
    repeat=st.integers(min_value=0),
)
def test_increasing_nonces_in_each_unit_pass_and_a_repeat_is_a_duplicate(
    unit: str, steps: list[int], repeat: int
) -> None:
    secret = b"nonce unit secret"
    keys = local_keys(secret)
    nonce = time.time_ns() * UNITS[unit] // 10**9
    sent: list[str] = []
    for step in steps:
        nonce += step
        sent.append(str(nonce))
        assert refusal(keys, headers(secret, SENDORDER, "", sent[-1]), SENDORDER, "", "") is None

    again = sent[repeat % len(sent)]
    assert refusal(keys, headers(secret, SENDORDER, "", again), SENDORDER, "", "") == "nonceDuplicate"


@FEW
@given(
    unit=st.sampled_from(sorted(UNITS)),
    back=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    stale=st.floats(min_value=1.0, max_value=1e6),
)
def test_a_nonce_a_little_behind_passes_and_one_more_than_the_tolerance_behind_is_below_threshold(
    unit: str, back: float, stale: float
) -> None:
    """Within the tolerance (3 s in the client's own unit) a late request still passes; the exact edge,
    `highest - tolerance`, counts as stale (tests/test_nonces.py pins it)."""
    secret = b"nonce tolerance secret"
    keys = local_keys(secret)
    highest = time.time_ns() * UNITS[unit] // 10**9
    tolerance = tolerance_for(highest, keys.nonce_tolerance_s)
    assert tolerance == 3 * UNITS[unit]
    assert refusal(keys, headers(secret, SENDORDER, "", str(highest)), SENDORDER, "", "") is None

    late = str(highest - 1 - int(back * (tolerance - 1)))
    too_late = str(highest - int(stale * tolerance))
    assert refusal(keys, headers(secret, SENDORDER, "", late), SENDORDER, "", "") is None
    assert refusal(keys, headers(secret, SENDORDER, "", too_late), SENDORDER, "", "") == "nonceBelowThreshold"


@SETTINGS
@given(
    nonces=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40),
    tolerance=st.integers(min_value=0, max_value=1000),
)
def test_the_nonce_window_accepts_exactly_what_is_new_and_not_stale(
    nonces: list[int], tolerance: int
) -> None:
    """Against a model: a nonce already accepted is a duplicate; otherwise it is stale if it lies at or
    beyond `tolerance` below the highest accepted (with no tolerance: anything below it). Refused
    nonces are not recorded. A first nonce of 0 is new (it was refused as stale)."""
    window = NonceWindow()
    accepted: list[int] = []
    for nonce in nonces:
        highest = max(accepted, default=-1)
        if nonce in accepted:
            expected: str | None = "nonceDuplicate"
        elif nonce <= highest - tolerance or (tolerance == 0 and nonce < highest):
            expected = "nonceBelowThreshold"
        else:
            expected = None
        assert window.check(nonce, tolerance) == expected, (nonce, accepted)
        if expected is None:
            accepted.append(nonce)
    assert window.highest == max(accepted, default=-1)
    assert len(window.recent) <= RECENT_KEPT


@SETTINGS
@given(
    seconds=st.floats(min_value=0.5, max_value=10.0),
    unit=st.sampled_from(sorted(UNITS)),
    lag=st.floats(min_value=-60.0, max_value=60.0),
)
@example(seconds=3.0, unit="milliseconds", lag=0.001)  # was 300: a tenth of the tolerance
def test_the_tolerance_is_the_same_span_of_time_in_every_unit_whatever_the_clocks_say(
    seconds: float, unit: str, lag: float
) -> None:
    """The nonce was signed `lag` seconds before the server reads it (negative: the bot's clock is
    ahead). The unit must still be recognised: `nonce / now` is then 999.99..., not 1000."""
    now = time.time()
    nonce = int((now - lag) * UNITS[unit])
    assert tolerance_for(nonce, seconds, now=now) == int(seconds * UNITS[unit])


@pytest.mark.parametrize("nonce", ["1", "42", str(int(time.time()))], ids=["one", "counter", "seconds_now"])
def test_a_counter_or_seconds_gets_no_tolerance(nonce: str) -> None:
    assert tolerance_for(int(nonce), 3.0) == 0


def test_these_strategies_reach_the_characters_that_matter() -> None:
    """A guard against a strategy quietly narrowing: the post data drawn must include `&`, `=`, `%`,
    `+`, non-ASCII and the empty string (checked on a fixed sample)."""
    seen: set[str] = set()

    @settings(SETTINGS, max_examples=300)
    @given(post_data())
    def collect(text: str) -> None:
        seen.add(text)

    collect()
    joined = "".join(seen)
    assert "" in seen
    for needed in "&=%+":
        assert needed in joined
    assert any(not t.isascii() for t in seen)
