"""What one reconciliation run may take, whatever the provider sends: at most
RELAY_RECONCILE_MAX_PAGES pages and RELAY_RECONCILE_MAX_RUN_SECONDS, and never a page the
listing already gave. Pure decisions: the caller says what time it is.

A run stopped by a limit has saved its progress page by page, so the next run goes on
from the last page stored. A listing that repeats itself would never end: the run stops
there and fails, which /health reports once it goes on for longer than two intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.errors import ProviderApiError
from relay.core.timefmt import duration
from relay.providers.calls import Page


@dataclass(frozen=True)
class Limits:
    max_pages: int
    max_seconds: float
    #: How long a run holds its provider; renewed every third of it while it lives.
    lease_seconds: float


class RunBudget:
    """The pages and time one run has left, from `started` on."""

    def __init__(self, limits: Limits, title: str, started: float) -> None:
        self.limits = limits
        self.title = title
        self.started = started
        self.pages = 0

    def listed(self) -> None:
        self.pages += 1

    def check(self, now: float) -> None:
        """Before another page is asked for: ProviderApiError saying which limit ends the run."""
        if self.pages >= self.limits.max_pages:
            raise ProviderApiError(
                f"{self.title} reconciliation stopped after {self.pages} pages, as many as one run may "
                "list (RELAY_RECONCILE_MAX_PAGES); the progress up to the last page stored is kept")
        if now - self.started >= self.limits.max_seconds:
            raise ProviderApiError(
                f"{self.title} reconciliation stopped after {duration(now - self.started)} and {self.pages} "
                "pages, as long as one run may last (RELAY_RECONCILE_MAX_RUN_SECONDS); the progress up to "
                "the last page stored is kept")


class PageHistory:
    """The pages one window's listing gave, to tell a provider that repeats itself.
    Call ids are kept by their hash: what a run remembers does not grow with the ids'
    length."""

    def __init__(self, title: str, start_token: str | None) -> None:
        self.title = title
        self._tokens = {start_token} if start_token is not None else set()
        self._calls: set[int] = set()

    def check(self, page: Page) -> None:
        """Remember `page`; ProviderApiError when it is one the listing gave already
        and says there is more (the last page of a window may hold anything)."""
        calls = {hash(call.call_id) for call in page.calls}
        why = None
        if page.token is not None and page.token in self._tokens:
            why = f"its pagination token {page.token[:100]!r} came before"
        elif page.token is not None and calls and calls <= self._calls:
            why = f"all its {len(page.calls)} calls were listed before"
        if why is not None:
            raise ProviderApiError(f"{self.title} repeated a page ({why}), so its listing would never end: "
                                   "the run stops there")
        if page.token is not None:
            self._tokens.add(page.token)
        self._calls |= calls
