"""Pure units: request parsing, the cost budget, the endpoint table, secrets."""

from __future__ import annotations

import json
import pickle
from urllib.parse import quote

import pytest

from guardian.errors import ConfigError
from guardian.kraken import endpoints as ep
from guardian.kraken.times import parse_iso, to_iso
from guardian.kraken.wire import WireError, batch_items, parse_batch, request_fields
from guardian.ratelimit import CostBudget, TokenBucket
from guardian.secret import ApiSecret, Secret

ITEM = {
    "order": "send",
    "order_tag": "1",
    "orderType": "lmt",
    "symbol": "PF_XBTUSD",
    "side": "buy",
    "size": 1,
}


# ---- wire ------------------------------------------------------------------------------------------


def test_fields_come_from_query_and_body() -> None:
    assert request_fields("a=1&b=x%20y", "c=%3A") == {"a": "1", "b": "x y", "c": ":"}
    assert request_fields("", "") == {}
    assert request_fields("blank=", "") == {"blank": ""}


def test_a_field_given_twice_is_refused_unless_it_is_a_list() -> None:
    with pytest.raises(WireError) as caught:
        request_fields("size=1", "size=100")
    assert caught.value.code == "invalidArgument"
    assert request_fields("orderIds=a&orderIds=b", "", frozenset({"orderIds"})) == {"orderIds": "a,b"}


def test_batch_accepts_raw_json_as_ccxt_sends_it() -> None:
    raw = json.dumps({"batchOrder": [{**ITEM, "cliOrdId": "a&b=%41+c d"}]}, separators=(",", ":"))
    items = batch_items(request_fields("", "json=" + raw))
    assert items[0]["cliOrdId"] == "a&b=%41+c d"


def test_batch_accepts_url_encoded_json_as_the_sdk_sends_it() -> None:
    text = json.dumps({"batchOrder": [{**ITEM, "cliOrdId": "a b"}]})  # default separators: spaces
    body = "json=" + quote(text, safe="").replace("%20", "+") + "&processBefore=2030-01-01T00%3A00%3A00Z"
    fields = request_fields("", body)
    items, doc = parse_batch(fields)
    assert items[0]["cliOrdId"] == "a b"
    assert fields["processBefore"] == "2030-01-01T00:00:00Z"
    assert doc == {"batchOrder": items}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", "requiredArgumentMissing"),
        ("json={not json", "Json Parse Error"),
        ("json=" + quote('{"batchOrder":[{"order":"send","reduceOnly":True}]}'), "Json Parse Error"),
        ("json=" + quote('{"batchOrder":[{"order":"send","size":NaN}]}'), "Json Parse Error"),
        ("json=" + quote('{"batch":[]}'), "invalidArgument"),
        ("json=" + quote('{"batchOrder":[1]}'), "invalidArgument"),
        ("json=" + quote('{"batchOrder":[{"size":1}]}'), "invalidArgument"),
        ("json=" + quote("[]"), "invalidArgument"),
    ],
)
def test_bad_batches_are_refused_with_kraken_codes(body: str, code: str) -> None:
    with pytest.raises(WireError) as caught:
        batch_items(request_fields("", body))
    assert caught.value.code == code


def test_undecodable_parameters_are_invalid() -> None:
    with pytest.raises(WireError) as caught:
        request_fields("a=%ff%fe", "")
    assert caught.value.code == "invalidArgument"


def test_iso_times_round_trip_with_and_without_milliseconds() -> None:
    assert to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert parse_iso("2026-01-01T00:00:00Z") == parse_iso("2026-01-01T00:00:00.000Z")
    assert parse_iso("2026-01-01T00:00:00.5Z") - parse_iso("2026-01-01T00:00:00Z") == pytest.approx(0.5)
    assert parse_iso("2026-01-01T01:00:00+01:00") == parse_iso("2026-01-01T00:00:00Z")
    assert parse_iso("2026-01-01T00:00:00") == parse_iso("2026-01-01T00:00:00Z")
    for bad in ("", "0", "yesterday"):
        with pytest.raises(ValueError, match=r"timestamp|Invalid isoformat"):
            parse_iso(bad)


# ---- the cost budget -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_a_strict_sliding_window() -> None:
    clock = Clock()
    budget = CostBudget(500, 10, clock=clock)
    for _ in range(50):
        assert budget.try_spend(10)
    assert not budget.try_spend(1)
    assert budget.available() == 0
    clock.now = 9.999
    assert not budget.try_spend(10)  # nothing has left the window yet
    clock.now = 10.0
    assert budget.available() == 500
    assert budget.try_spend(500)


def test_budget_reserve_keeps_room_for_the_switch() -> None:
    budget = CostBudget(100, 10, clock=Clock())
    assert budget.try_spend(70, reserve=25)
    assert not budget.try_spend(10, reserve=25)  # would leave 20 < 25
    assert budget.try_spend(25)  # the switch itself spends the reserve
    assert budget.available() == 5


def test_budget_spend_records_what_goes_out_regardless() -> None:
    clock = Clock()
    budget = CostBudget(30, 10, clock=clock)
    budget.spend(25)
    budget.spend(25)  # the switch's refresh goes out even over the model's capacity
    budget.spend(0)
    assert budget.available() == -20
    assert not budget.try_spend(1)
    clock.now = 10
    assert budget.available() == 30


def test_budget_tells_when_a_cost_will_fit() -> None:
    clock = Clock()
    budget = CostBudget(100, 10, clock=clock)
    assert budget.seconds_until(10) == 0
    budget.try_spend(60)
    clock.now = 4
    budget.try_spend(40)
    assert budget.seconds_until(30) == pytest.approx(6)  # the first spend expires at t=10
    assert budget.seconds_until(101) == float("inf")
    assert budget.seconds_until(80, reserve=30) == float("inf")
    assert budget.try_spend(0)


def test_budget_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        CostBudget(0, 10)


# ---- the token bucket (the public budget) -----------------------------------------------------------------


def test_a_token_bucket_answers_its_burst_at_once_then_holds_to_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 40, clock=clock)
    assert sum(bucket.try_spend() for _ in range(100)) == 40  # a full bucket: the burst at once
    assert bucket.seconds_until(1) == pytest.approx(0.1)
    clock.now = 0.35
    assert sum(bucket.try_spend() for _ in range(100)) == 3  # refilled at 10 a second
    clock.now = 100.0
    assert bucket.available() == 40  # never more than the burst, however long it rested
    assert bucket.seconds_until(41) == float("inf")


def test_a_token_bucket_never_lets_more_than_burst_plus_rate_times_time_through() -> None:
    clock = Clock()
    bucket = TokenBucket(20, 60, clock=clock)
    spent = 0
    for step in range(1, 1001):  # a flood over 10 s, 100 tries a second
        clock.now = step / 100
        spent += bucket.try_spend()
    assert 60 + 20 * 10 - 1 <= spent <= 60 + 20 * 10


def test_a_token_bucket_is_not_fooled_by_a_clock_that_goes_back() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 5, clock=clock)
    clock.now = 10.0
    assert sum(bucket.try_spend() for _ in range(10)) == 5
    clock.now = 9.0  # (monotonic clocks do not, but the bucket must not mint tokens if one did)
    assert not bucket.try_spend()
    clock.now = 10.15  # 0.15 s since the latest time it saw: one and a half tokens
    assert bucket.try_spend() and not bucket.try_spend()


def test_a_token_bucket_rejects_nonsense_parameters() -> None:
    for rate, burst in ((0, 10), (10, 0), (-1, 5)):
        with pytest.raises(ValueError, match="positive"):
            TokenBucket(rate, burst)


# ---- the endpoint table ----------------------------------------------------------------------------


def test_table_costs_match_kraken() -> None:
    costs = {e.name: e.cost for e in ep.ENDPOINTS}
    assert costs["sendorder"] == costs["editorder"] == costs["cancelorder"] == 10
    assert costs["cancelallorders"] == costs["cancelallordersafter"] == 25
    assert costs["accounts"] == costs["openorders"] == costs["openpositions"] == costs["fills"] == 2
    assert costs["orders/status"] == 1
    assert costs["withdrawal"] == 100
    assert ep.endpoint("batchorder").cost_for({}, 3) == 12
    assert ep.endpoint("fills").cost_for({"lastFillTime": "x"}) == 25
    assert ep.endpoint("fills").cost_for({}) == 2


def test_table_permissions_and_risk() -> None:
    by = ep.BY_NAME
    public = {n for n, e in by.items() if e.permission is ep.Permission.PUBLIC}
    assert {"instruments", "tickers", "tickers/{symbol}", "orderbook", "v4/historicalfundingrates"} <= public
    assert all(n.startswith(("charts", "history/v", "rfqs", "instruments", "tickers", "v4/")) or "/" not in n
               for n in public)  # fmt: skip
    assert {n for n, e in by.items() if e.risk is ep.Risk.OPENS} == {
        "sendorder", "editorder", "rfqs/{rfqUid}/place-offer", "rfqs/{rfqUid}/replace-offer",
        "assignmentprogram/add",
    }  # fmt: skip
    assert {n for n, e in by.items() if e.risk is ep.Risk.REDUCES} == {
        "cancelorder", "cancelallorders", "rfqs/{rfqUid}/cancel-offer", "assignmentprogram/delete"
    }  # fmt: skip
    # Every change that is not an order needs the settings permission (RFQ offers are orders: trade).
    assert {n for n, e in by.items() if e.risk is ep.Risk.SETTING} <= {
        n for n, e in by.items() if e.permission is ep.Permission.SETTINGS
    }
    assert all(
        e.pool is ep.Pool.HISTORY for n, e in by.items() if n.startswith("history/v") and "market" not in n
    )
    assert {n for n, e in by.items() if e.permission is ep.Permission.FUNDS} == {
        "transfer", "transfer/subaccount", "withdrawal"
    }  # fmt: skip
    assert all(e.pool is ep.Pool.FREE for e in by.values() if e.permission is ep.Permission.PUBLIC)
    assert ep.BATCH_ITEM_RISK == {"send": ep.Risk.OPENS, "edit": ep.Risk.OPENS, "cancel": ep.Risk.REDUCES}
    assert by["sendorder"].signed_path == "/api/v3/sendorder"
    assert by["orders/status"].methods == ("POST", "GET")


def test_table_routes_paths_and_templates() -> None:
    assert ep.match("/derivatives/api/v3/sendorder") == (ep.BY_NAME["sendorder"], {})
    assert ep.match("/derivatives/api/v3/tickers/PF_XBTUSD") == (
        ep.BY_NAME["tickers/{symbol}"],
        {"symbol": "PF_XBTUSD"},
    )
    assert ep.match("/derivatives/api/v3/tickers/a/b") is None
    assert ep.match("/derivatives/api/v3/nope") is None
    assert ep.match("/derivatives/api/v3/leveragepreferences", "PUT")[0].name == "leveragepreferences:put"  # type: ignore[index]
    assert ep.match("/derivatives/api/v3/leveragepreferences", "GET")[0].name == "leveragepreferences"  # type: ignore[index]
    assert ep.match("/api/charts/v1/mark/PF_XBTUSD/1h") == (
        ep.BY_NAME["charts/{tick_type}/{symbol}/{resolution}"],
        {"tick_type": "mark", "symbol": "PF_XBTUSD", "resolution": "1h"},
    )
    assert ep.nearest("/api/history/v2/order") == "/api/history/v2/orders"
    with pytest.raises(KeyError, match="nope"):
        ep.endpoint("nope")


# ---- secrets ---------------------------------------------------------------------------------------


def test_secret_never_shows_itself() -> None:
    secret = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret!r} {secret}"
    assert secret.reveal() == "hunter2-very-secret"
    assert secret == Secret("hunter2-very-secret")
    assert hash(secret) == hash(Secret("hunter2-very-secret"))
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_api_secret_must_be_base64_and_says_so_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="not valid base64") as caught:
        ApiSecret("not*base64*secret!", name="accounts[0].api_secret")
    assert "not*base64" not in str(caught.value)
    assert "accounts[0].api_secret" in str(caught.value)
    with pytest.raises(ConfigError, match="empty"):
        ApiSecret("")
    assert ApiSecret("AAEC").key_bytes() == b"\x00\x01\x02"
    assert "AAEC" not in repr(ApiSecret("AAEC"))


# ---- metrics ---------------------------------------------------------------------------------------


def test_request_outcomes_from_unknown_exchange_codes_share_one_series() -> None:
    from guardian.metrics import Metrics

    metrics = Metrics(list, process=False)
    metrics.on_request("main", "sendorder", "error:someNewCode", None, 0.001, 0.001)
    metrics.on_request("main", "sendorder", "error:anotherNewCode", None, 0.001, 0.001)
    metrics.on_request("main", "sendorder", "error:apiLimitExceeded", None, 0.001, 0.001)
    metrics.on_request("main", "sendorder", "refused", "priceOutsideBand", 0.001, None)
    text = metrics.render().decode()
    assert 'outcome="error:other"} 2.0' in text
    assert 'outcome="error:apiLimitExceeded"} 1.0' in text
    assert "someNewCode" not in text
    assert 'guardian_rejections_total{account="main",reason="priceOutsideBand"} 1.0' in text
