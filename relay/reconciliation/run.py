"""One reconciliation run for one provider: list the calls that ended in a window, and
store each one the outbox does not hold yet, as the webhook it would have sent, marked
as coming from reconciliation. The forwarder then delivers it like any other.

Storing is the deduplication: the outbox keeps one row per provider, event and call id,
so a call whose webhook did come is stored again as nothing. Only a call listed in part
(Retell leaves transcripts out) is looked up first, so that calls already held are not
fetched whole for nothing; a dry run looks every call up and stores none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from relay.errors import RelayError
from relay.destinations import Destination, owed
from relay.outbox import AsyncOutbox, NewDelivery, Progress, Reconciliation, RunOutcome
from relay.providers import Provider
from relay.providers.calls import Api, CallSource, Page, Window
from relay.reconciliation.schedule import Planned, Timing, next_run, progress

log = structlog.get_logger("relay.reconciliation")

#: How long a run holds its provider before another instance may take over; renewed
#: with every page stored, so only a run stuck far longer than a page loses it.
LEASE_SECONDS = 900.0
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
                           planned: Planned, tally: Tally, *, dry_run: bool = False,
                           saved: Callable[[Page], Awaitable[bool]] | None = None,
                           destinations: Sequence[Destination] = (),
                           clock: Callable[[], float] = time.time) -> None:
    """Store the window's ended calls the outbox lacks, owed to Roark and to each of
    `destinations` that asks for the event, as a webhook would be. `saved` is called
    after each page is stored; when it answers False the run stops there."""
    window = planned.window
    tally.window = window if tally.window is None else Window(tally.window.start, window.end)
    async for page in source.pages(api, window, planned.token):
        tally.listed += len(page.calls)
        ended = [call for call in page.calls if call.ended]
        tally.ended += len(ended)
        keys = {call.call_id: envelope.dedupe_key for call in ended
                if (envelope := provider.envelope(call.body)).call_id is not None}
        for call in ended:
            if call.call_id not in keys:  # it would be stored anew by every run
                log.warning("reconcile_call_unusable", provider=provider.name, call_id=call.call_id[:300],
                            reason="the call id is too long or not printable, so it cannot be deduplicated")
        ended = [call for call in ended if call.call_id in keys]
        look_up = dry_run or not all(call.whole for call in ended)
        held = await outbox.held(provider.name, list(keys.values())) if look_up and keys else set()
        for call in ended:
            if keys[call.call_id] in held:
                tally.held += 1
                continue
            body = call.body if call.whole else await source.fetch(api, call)
            if body is None:
                tally.gone += 1
                log.info("reconcile_call_gone", provider=provider.name, call_id=call.call_id)
                continue
            envelope = provider.envelope(body)
            if not dry_run:
                inserted = await outbox.insert(NewDelivery(
                    provider.name, envelope.event, envelope.call_id, envelope.dedupe_key, body,
                    clock(), origin="reconciliation",
                    destinations=owed(destinations, provider.name, envelope.event)))
                if inserted.duplicate:  # its webhook came while the run was under way
                    tally.held += 1
                    continue
                log.info("reconcile_call_queued", provider=provider.name, call_id=call.call_id,
                         delivery_id=inserted.delivery_id)
            tally.queued += 1
            if len(tally.queued_calls) < KEPT_CALL_IDS:
                tally.queued_calls.append(call.call_id)
        if saved is not None and not await saved(page):
            return


async def scheduled_run(provider: Provider, source: CallSource, api: Api, outbox: AsyncOutbox,
                        timing: Timing, owner: str, tally: Tally, *,
                        destinations: Sequence[Destination] = (),
                        clock: Callable[[], float] = time.time) -> bool:
    """The run the schedule calls for, under the provider's lease: it goes on from the
    stored state (a window a failed run left part-way first, then the rest), saves its
    progress page by page and records how it ended. False when another instance holds
    the lease (nothing was done). Errors are recorded, then raised."""
    state = await outbox.lease_reconciliation(provider.name, owner, LEASE_SECONDS)
    if state is None:
        return False
    reconciled_until = state.reconciled_until
    planned = next_run(state, clock(), timing)
    saved_pages = 0
    lost = False

    async def saved(page: Page) -> bool:
        nonlocal reconciled_until, saved_pages, lost
        done = progress(reconciled_until, planned.window, page.token)
        if not await outbox.save_reconciliation(provider.name, owner, done, LEASE_SECONDS):
            log.warning("reconcile_lease_lost", provider=provider.name,
                        consequence="another instance took the run over; this one stops")
            lost = True
            return False
        reconciled_until, saved_pages = done.reconciled_until, saved_pages + 1
        return True

    try:
        while planned is not None:
            await reconcile_window(provider, source, api, outbox, planned, tally, saved=saved,
                                   destinations=destinations, clock=clock)
            if lost or planned.token is None:
                break
            # The window left part-way is done; the time since it comes next.
            planned = next_run(Reconciliation(provider.name, reconciled_until), clock(), timing)
    except asyncio.CancelledError:  # the relay is stopping: hand the lease back, record nothing
        await outbox.end_reconciliation(provider.name, owner, None)
        raise
    except Exception as error:
        if planned is not None and planned.token is not None and not saved_pages:
            # Resuming failed at once (a token the provider no longer takes, say): the
            # next run lists the window from its start rather than stalling on it.
            await outbox.save_reconciliation(provider.name, owner, Progress(reconciled_until), LEASE_SECONDS)
        await outbox.end_reconciliation(provider.name, owner, RunOutcome(clock(), tally.queued, describe(error)))
        raise
    await outbox.end_reconciliation(provider.name, owner, RunOutcome(clock(), tally.queued))
    return True


def describe(error: Exception) -> str:
    """An error as the status page and logs show it."""
    return str(error) if isinstance(error, RelayError) else f"{type(error).__name__}: {error}"
