"""One reconciliation run for one provider: list the calls that ended in a window, and
store each one the outbox does not hold yet, as the webhook it would have sent, marked
as coming from reconciliation. The forwarder then delivers it like any other.

Each page's calls are looked up in the outbox first, by a dedupe key made from the call's
id alone, so that a call whose webhook did come is neither fetched nor rebuilt. The
others are handled one at a time: the webhook is built (or fetched, when the listing
leaves parts out) right before it is stored, and dropped after. A dry run stores none.
Storing is still the last word on duplicates: a webhook that came meanwhile is kept once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from relay.core.errors import RelayError, StoreError
from relay.destinations import Destination, owed
from relay.outbox import AsyncOutbox, NewDelivery, Progress, Reconciliation, RunOutcome
from relay.providers import Provider
from relay.providers.base import call_dedupe_key
from relay.providers.calls import Api, CallSource, ListedCall, Page, Window
from relay.reconciliation.limits import Limits, PageHistory, RunBudget
from relay.reconciliation.schedule import Planned, Timing, next_run, progress

log = structlog.get_logger("relay.reconciliation")

#: Call ids a tally keeps, for `relay reconcile` to print.
KEPT_CALL_IDS = 1000


@dataclass
class Tally:
    """What a run found, for logs, the CLI and the status page."""

    window: Window | None = None
    listed: int = 0
    ended: int = 0
    held: int = 0  # already in the outbox: their webhook came (or an earlier run stored them)
    queued: int = 0  # stored now (or, in a dry run, would be)
    gone: int = 0  # listed, then no longer found when fetched whole
    queued_calls: list[str] = field(default_factory=list)


async def reconcile_window(provider: Provider, source: CallSource, api: Api, outbox: AsyncOutbox,
                           planned: Planned, tally: Tally, budget: RunBudget, *, dry_run: bool = False,
                           saved: Callable[[Page], Awaitable[bool]] | None = None,
                           destinations: Sequence[Destination] = (),
                           clock: Callable[[], float] = time.time) -> None:
    """Store the window's ended calls the outbox lacks, owed to Roark and to each of
    `destinations` that asks for the event, as a webhook would be. `saved` is called
    after each page is stored; when it answers False the run stops there. The run's
    `budget` is checked before each page after the first."""
    window = planned.window
    tally.window = window if tally.window is None else Window(tally.window.start, window.end)
    history = PageHistory(provider.title, planned.token)

    async def store(call: ListedCall, key: str) -> None:
        # The body lives only in here: a run holds one call's at a time.
        body = await source.webhook(api, call)
        if body is None:
            tally.gone += 1
            log.info("reconcile_call_gone", provider=provider.name, call_id=call.call_id)
            return
        if not dry_run:
            inserted = await outbox.insert(NewDelivery(
                provider.name, source.event, call.call_id, key, body, clock(), origin="reconciliation",
                destinations=owed(destinations, provider.name, source.event)))
            if inserted.duplicate:  # its webhook came while the run was under way
                tally.held += 1
                return
            log.info("reconcile_call_queued", provider=provider.name, call_id=call.call_id,
                     delivery_id=inserted.delivery_id)
        tally.queued += 1
        if len(tally.queued_calls) < KEPT_CALL_IDS:
            tally.queued_calls.append(call.call_id)

    async def take(page: Page) -> bool:
        """Store what `page` lacks; False when the run must stop there."""
        budget.listed()
        history.check(page)
        tally.listed += len(page.calls)
        ended = [call for call in page.calls if call.ended]
        tally.ended += len(ended)
        keys = {call.call_id: key for call in ended
                if (key := call_dedupe_key(source.event, call.call_id)) is not None}
        held = await outbox.held(provider.name, list(keys.values())) if keys else set()
        for call in ended:
            key = keys.get(call.call_id)
            if key is None:  # it would be stored anew by every run
                log.warning("reconcile_call_unusable", provider=provider.name, call_id=call.call_id[:300],
                            reason="the call id is too long or not printable, so it cannot be deduplicated")
            elif key in held:
                tally.held += 1
            else:
                await store(call, key)
        return saved is None or await saved(page)

    async with contextlib.aclosing(source.pages(api, window, planned.token)) as pages:
        async for page in pages:
            if not await take(page):
                return
            more = page.token is not None
            del page  # the next page is asked for without this one: one answer at a time
            if more:
                budget.check(clock())


async def keep_lease(outbox: AsyncOutbox, provider: str, owner: str, seconds: float,
                     clock: Callable[[], float], wait: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Renew the run's lease every third of it, for as long as the run lives (it is
    cancelled when the run ends): only a run whose process died gives its provider up,
    `seconds` after. Ends when another instance has taken the provider over."""
    while True:
        await wait(seconds / 3)
        try:
            if not await outbox.renew_reconciliation(provider, owner, clock() + seconds):
                log.warning("reconcile_lease_lost", provider=provider,
                            consequence="another instance took the run over; this one stops at its next page")
                return
        except StoreError as error:  # the run itself meets the same trouble, and says so
            log.warning("reconcile_lease_not_renewed", provider=provider, error=str(error))


async def scheduled_run(provider: Provider, source: CallSource, api: Api, outbox: AsyncOutbox,
                        timing: Timing, limits: Limits, owner: str, tally: Tally, *,
                        destinations: Sequence[Destination] = (),
                        clock: Callable[[], float] = time.time) -> bool:
    """The run the schedule calls for, under the provider's lease: it goes on from the
    stored state (a window a failed run left part-way first, then the rest), saves its
    progress page by page and records how it ended. False when another instance holds
    the lease (nothing was done). Errors are recorded, then raised."""
    now = clock()
    state = await outbox.lease_reconciliation(provider.name, owner, now, now + limits.lease_seconds)
    if state is None:
        return False
    budget = RunBudget(limits, provider.title, clock())
    reconciled_until = state.reconciled_until
    planned = next_run(state, clock(), timing)
    saved_pages = 0
    lost = False

    async def saved(page: Page) -> bool:
        nonlocal reconciled_until, saved_pages, lost
        assert planned is not None  # pages are saved only while a planned window runs
        done = progress(reconciled_until, planned.window, page.token)
        if not await outbox.save_reconciliation(provider.name, owner, done, clock() + limits.lease_seconds):
            log.warning("reconcile_lease_lost", provider=provider.name,
                        consequence="another instance took the run over; this one stops")
            lost = True
            return False
        reconciled_until, saved_pages = done.reconciled_until, saved_pages + 1
        return True

    renewing = asyncio.create_task(keep_lease(outbox, provider.name, owner, limits.lease_seconds, clock),
                                   name=f"relay-reconcile-lease-{provider.name}")
    try:
        try:
            while planned is not None:
                await reconcile_window(provider, source, api, outbox, planned, tally, budget, saved=saved,
                                       destinations=destinations, clock=clock)
                if lost or planned.token is None:
                    break
                # The window left part-way is done; the time since it comes next.
                planned = next_run(Reconciliation(provider.name, reconciled_until), clock(), timing)
                if planned is not None:
                    budget.check(clock())
        finally:
            renewing.cancel()
            await asyncio.wait([renewing])
    except asyncio.CancelledError:  # the relay is stopping: hand the lease back, record nothing
        await outbox.end_reconciliation(provider.name, owner, None)
        raise
    except Exception as error:
        if planned is not None and planned.token is not None and not saved_pages:
            # Resuming failed at once (a token the provider no longer takes, say): the
            # next run lists the window from its start rather than stalling on it.
            await outbox.save_reconciliation(provider.name, owner, Progress(reconciled_until),
                                             clock() + limits.lease_seconds)
        await outbox.end_reconciliation(provider.name, owner, RunOutcome(clock(), tally.queued, describe(error)))
        raise
    await outbox.end_reconciliation(provider.name, owner, RunOutcome(clock(), tally.queued))
    return True


def describe(error: Exception) -> str:
    """An error as the status page and logs show it."""
    return str(error) if isinstance(error, RelayError) else f"{type(error).__name__}: {error}"
