"""How reconciliation pages through a provider's calls: VAPI by narrowing createdAt until a
page comes back short, Retell by its cursor. Pure decisions, no server."""

import pytest

from relay.core.errors import ProviderApiError
from relay.providers.calls import Window
from relay.providers.retell_calls import list_request
from relay.providers.vapi_calls import Bound, is_short, next_bound, query

T = 1_700_000_000.0


def calls(*created: str) -> list[str]:
    """A page's calls, as their createdAt in the order listed."""
    return list(created)


def test_vapi_asks_for_a_window_on_update_time_widened_to_whole_milliseconds():
    assert query(Window(T + 0.0004, T + 60.0001), None, limit=50) == {
        "limit": 50, "updatedAtGe": "2023-11-14T22:13:20.000Z", "updatedAtLt": "2023-11-14T22:14:20.001Z"}
    narrowed = query(Window(T, T + 60), Bound("Le", "2023-11-14T22:13:50.123Z"))
    assert narrowed["createdAtLe"] == "2023-11-14T22:13:50.123Z"


@pytest.mark.parametrize("count, fresh, largest, short", [
    (0, 0, 0, True),     # nothing left
    (50, 50, 0, False),  # as many as asked
    (37, 37, 0, False),  # a first page under limit may be the server's cap
    (10, 9, 37, True),   # fewer than a page already seen: the end
    (37, 36, 37, False),  # as many as the largest page seen: the cap again
    (1, 0, 1, True),     # only the call the last page ended on, again
    (60, 60, 0, False),  # a server that gives more than asked is not short either
])
def test_a_vapi_page_is_short_only_when_it_cannot_be_a_capped_one(count, fresh, largest, short):
    assert is_short(count, fresh, 50, largest) is short


def test_vapi_narrows_past_the_oldest_call_of_a_newest_first_page():
    page = calls("2024-01-01T00:00:09.000Z", "2024-01-01T00:00:05.000Z", "2024-01-01T00:00:02.000Z")
    assert next_bound(page, None) == Bound("Le", "2024-01-01T00:00:02.000Z")


def test_a_server_listing_oldest_first_is_followed_the_other_way():
    page = calls("2024-01-01T00:00:02.000Z", "2024-01-01T00:00:05.000Z")
    assert next_bound(page, None) == Bound("Ge", "2024-01-01T00:00:05.000Z")


def test_a_page_all_in_one_millisecond_steps_past_it_instead_of_looping():
    at = "2024-01-01T00:00:02.000Z"
    assert next_bound(calls(at, at), None) == Bound("Lt", at)
    assert next_bound(calls(at, at), Bound("Ge", "2024-01-01T00:00:01.000Z")) == Bound("Gt", at)
    assert next_bound(calls(at), None) == Bound("Le", at)  # one call: it comes back alone, the end


def test_a_full_page_without_creation_times_cannot_be_paged_past():
    with pytest.raises(ProviderApiError, match="createdAt"):
        next_bound([None], None)


def test_vapi_tokens_round_trip_and_refuse_anything_else():
    bound = Bound("Le", "2024-01-01T00:00:02.000Z")
    assert Bound.parse(bound.token) == bound
    for token in ("Xx:2024-01-01T00:00:02Z", "Le:yesterday", ""):
        with pytest.raises(ValueError):
            Bound.parse(token)


def test_retell_lists_ended_calls_by_end_time_oldest_first_from_its_cursor():
    body = list_request(Window(T + 0.0004, T + 60.0001), None, limit=100)
    assert body == {
        "filter_criteria": {
            "end_timestamp": {"op": "bt", "type": "range", "value": [1_700_000_000_000, 1_700_000_060_001]},
            "call_status": {"op": "in", "type": "enum", "value": ["ended", "not_connected"]},
        },
        "sort_order": "ascending", "limit": 100}
    assert list_request(Window(T, T + 1), "key-2")["pagination_key"] == "key-2"
