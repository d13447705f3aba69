"""`relay reconcile`: one reconciliation run now, for each chosen provider, and what it
found in words.

Without a window it is the run the schedule would make next: under the provider's
lease, going on from the stored state and saving its progress. A window an operator
chooses (`--since`, `--from`/`--to`) is a backfill beside the schedule: it stores what
is missing but leaves the schedule's state alone. A dry run stores nothing at all.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

import httpx

from relay.core.errors import ProviderApiError, StoreUnavailable
from relay.core.timefmt import iso
from relay.outbox import AsyncOutbox, Backend
from relay.providers import PROVIDERS
from relay.providers.calls import Window
from relay.reconciliation.limits import RunBudget
from relay.reconciliation.run import Tally, reconcile_window, scheduled_run
from relay.reconciliation.schedule import Planned, chosen_window, next_run
from relay.reconciliation.service import call_sources, limits, provider_api, timing
from relay.settings import Settings

#: A chosen window, made from the time the run starts.
Chooser = Callable[[float], Window]


def chosen_providers(settings: Settings, only: str | None) -> list[str]:
    """The providers to reconcile: `only`, or every one whose API key is set; ValueError
    naming the variable to set when there is none."""
    configured = call_sources(settings)
    names = [only] if only else list(configured)
    missing = [PROVIDERS[name] for name in names if name not in configured] or \
        ([] if names else list(PROVIDERS.values()))
    if missing:
        variables = " or ".join(p.api_key_variable for p in missing if p.api_key_variable)
        raise ValueError(f"set {variables} to reconcile: the relay asks the provider's API which calls ended")
    return names


def chooser(grace: float, since: float | None, start: float | None, end: float | None) -> Chooser | None:
    """The operator's window, made when the run starts; None: the schedule's. ValueError
    when it is empty already."""
    if since is None and start is None:
        return None
    chosen_window(time.time(), grace, since, start, end)
    return functools.partial(chosen_window, grace=grace, since=since, start=start, end=end)


def report(name: str, tally: Tally, dry_run: bool) -> list[str]:
    """What `relay reconcile` prints for one provider's run."""
    window = f"{iso(tally.window.start)} to {iso(tally.window.end)}" if tally.window else "nothing ended yet"
    verb = "would queue" if dry_run else "queued"
    lines = [f"{name}: {window}: {tally.listed} calls listed, {tally.ended} ended, "
             f"{tally.held} already held, {tally.queued} {verb}"
             + (f", {tally.gone} gone before they could be fetched" if tally.gone else "")]
    lines += [f"  {verb}: {call_id}" for call_id in tally.queued_calls]
    if len(tally.queued_calls) < tally.queued:
        lines.append(f"  ... and {tally.queued - len(tally.queued_calls)} more")
    return lines


async def reconcile_now(settings: Settings, backend: Backend, names: list[str], chosen: Chooser | None,
                        dry_run: bool, echo: Callable[[str, bool], None], *,
                        transport: httpx.AsyncBaseTransport | None = None,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                        clock: Callable[[], float] = time.time) -> bool:
    """Run each of `names` (providers with an API key) once; `echo(line, is_error)`
    says what happened. True when every run succeeded."""
    sources = call_sources(settings)
    schedule, run_limits = timing(settings), limits(settings)
    outbox = AsyncOutbox(backend, clock)
    owner = f"relay-reconcile:{time.time_ns()}"
    succeeded = True
    try:
        for name in names:
            provider, source = PROVIDERS[name], sources[name]
            api = provider_api(settings, provider, source, transport=transport, sleep=sleep, clock=clock)
            tally = Tally()
            try:
                if chosen is None and not dry_run:
                    if not await scheduled_run(provider, source, api, outbox, schedule, run_limits, owner, tally,
                                               destinations=settings.destinations, clock=clock):
                        echo(f"{name}: skipped: a relay is reconciling it right now", False)
                        continue
                else:
                    states = {state.provider: state for state in await outbox.reconciliations()}
                    planned = Planned(chosen(clock())) if chosen else next_run(states.get(name), clock(), schedule)
                    if planned is not None:
                        await reconcile_window(provider, source, api, outbox, planned, tally,
                                               RunBudget(run_limits, provider.title, clock()), dry_run=dry_run,
                                               destinations=settings.destinations, clock=clock)
            except (ProviderApiError, StoreUnavailable) as error:
                succeeded = False
                echo(f"{name}: FAILED: {error}", True)
                if tally.queued:
                    echo(f"{name}: {tally.queued} calls were queued before it failed", True)
                continue
            finally:
                await api.aclose()
            for line in report(name, tally, dry_run):
                echo(line, False)
    finally:
        await outbox.close()
    return succeeded
