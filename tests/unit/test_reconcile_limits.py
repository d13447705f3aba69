"""What bounds a reconciliation run, whatever the provider sends: pages asked for with
fewer calls when too large to read, a cap on pages and time, and a listing that repeats
itself. Pure decisions, no server."""

import asyncio

import pytest

from relay.core.errors import ProviderAnswerTooLarge, ProviderApiError
from relay.providers.calls import ListedCall, Page, fitting, halved
from relay.reconciliation.limits import Limits, PageHistory, RunBudget

T = 1_700_000_000.0


def page(token: str | None, *call_ids: str) -> Page:
    return Page([ListedCall(call_id, True) for call_id in call_ids], token)


def test_a_page_limit_halves_down_to_one_call():
    assert [halved(n) for n in (100, 50, 25, 3, 2, 1)] == [50, 25, 12, 1, 1, 1]


def fits(largest: int):
    """A listing whose answer can be read with at most `largest` calls in it."""
    asked = []

    async def ask(limit: int) -> str:
        asked.append(limit)
        if limit > largest:
            raise ProviderAnswerTooLarge(f"{limit} calls are too many")
        return f"{limit} calls"

    return ask, asked


def test_a_page_too_large_is_asked_for_again_with_half_the_limit():
    ask, asked = fits(7)
    assert asyncio.run(fitting(ask, 50, "vapi")) == ("6 calls", 6)
    assert asked == [50, 25, 12, 6]
    ask, asked = fits(50)
    assert asyncio.run(fitting(ask, 50, "vapi")) == ("50 calls", 50) and asked == [50]


def test_a_single_call_too_large_ends_the_run_naming_the_setting():
    ask, asked = fits(0)
    with pytest.raises(ProviderAnswerTooLarge, match="1 calls are too many, with one call a page: raise "
                                                     "RELAY_RECONCILE_MAX_ANSWER_BYTES to reconcile that call"):
        asyncio.run(fitting(ask, 4, "retell"))
    assert asked == [4, 2, 1]


def test_a_run_may_list_so_many_pages_and_last_so_long():
    budget = RunBudget(Limits(max_pages=3, max_seconds=600, lease_seconds=60), "Retell", T)
    for _ in range(2):
        budget.listed()
        budget.check(T + 599)
    budget.listed()
    with pytest.raises(ProviderApiError, match=r"Retell reconciliation stopped after 3 pages, as many as one run "
                                               r"may list \(RELAY_RECONCILE_MAX_PAGES\)"):
        budget.check(T + 1)
    budget = RunBudget(Limits(max_pages=3, max_seconds=600, lease_seconds=60), "VAPI", T)
    budget.listed()
    with pytest.raises(ProviderApiError, match=r"VAPI reconciliation stopped after 10 min and 1 pages, as long as "
                                               r"one run may last \(RELAY_RECONCILE_MAX_RUN_SECONDS\)"):
        budget.check(T + 600)


def test_a_page_whose_token_came_before_is_a_repeat():
    history = PageHistory("Retell", None)
    history.check(page("key-1", "a", "b"))
    history.check(page("key-2", "c"))
    with pytest.raises(ProviderApiError, match=r"Retell repeated a page \(its pagination token 'key-1' came "
                                               r"before\), so its listing would never end"):
        history.check(page("key-1", "d"))


def test_the_token_a_window_resumes_from_counts_as_given():
    with pytest.raises(ProviderApiError, match="'key-7' came before"):
        PageHistory("Retell", "key-7").check(page("key-7", "a"))


def test_a_page_of_calls_all_listed_before_is_a_repeat_whatever_its_token():
    history = PageHistory("Retell", None)
    history.check(page("key-1", "a", "b"))
    history.check(page("key-2", "b", "c"))  # some calls again: a provider's overlap, not a loop
    with pytest.raises(ProviderApiError, match=r"all its 2 calls were listed before"):
        history.check(page("key-3", "c", "a"))


def test_the_last_page_and_empty_pages_are_never_repeats():
    history = PageHistory("VAPI", None)
    history.check(page("Le:1", "a", "b"))
    history.check(page(None, "a"))  # the window ends here whatever it holds
    history.check(page("Le:2"))
    history.check(page("Le:3"))  # nothing to tell it by but its token; the page cap ends it
