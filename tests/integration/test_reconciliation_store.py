"""What the outbox keeps for reconciliation: the per-provider lease, progress and last
run, and which calls it already holds. Every backend must pass this file unchanged."""

import contextlib
import threading

from relay.outbox import NewDelivery, Progress, RunOutcome, open_backend

NOW = 1_700_000_000.0
LEASE = 600.0


def test_one_owner_holds_a_providers_lease_until_it_expires(backend):
    first = backend.lease_reconciliation("vapi", "a", NOW, NOW + LEASE)
    assert first is not None and first.reconciled_until is None and first.lease_owner == "a"
    assert first.running(NOW + LEASE - 1) and not first.running(NOW + LEASE)
    assert backend.lease_reconciliation("vapi", "b", NOW + 1, NOW + 1 + LEASE) is None
    assert backend.lease_reconciliation("retell", "b", NOW + 1, NOW + 1 + LEASE) is not None
    assert backend.lease_reconciliation("vapi", "a", NOW + 2, NOW + 2 + LEASE) is not None  # renewed
    taken = backend.lease_reconciliation("vapi", "b", NOW + 2 + LEASE, NOW + 2 + 2 * LEASE)
    assert taken is not None and taken.lease_owner == "b"


def test_progress_is_saved_only_under_a_live_lease(backend):
    backend.lease_reconciliation("retell", "a", NOW, NOW + LEASE)
    assert backend.save_reconciliation("retell", "a", Progress(None, NOW - 100, NOW, "page-2"), NOW + LEASE)
    state = backend.lease_reconciliation("retell", "a", NOW + 1, NOW + LEASE)
    assert (state.pending_start, state.pending_end, state.pending_token) == (NOW - 100, NOW, "page-2")

    backend.lease_reconciliation("retell", "b", NOW + LEASE, NOW + 2 * LEASE)  # a's lease ran out
    assert not backend.save_reconciliation("retell", "a", Progress(NOW), NOW + 3 * LEASE)
    assert not backend.end_reconciliation("retell", "a", RunOutcome(NOW, 0))
    [state] = backend.reconciliations()
    assert state.lease_owner == "b" and state.reconciled_until is None and state.pending_token == "page-2"


def test_a_run_records_its_outcome_and_failures_keep_when_they_began(backend):
    backend.lease_reconciliation("vapi", "a", NOW, NOW + LEASE)
    backend.save_reconciliation("vapi", "a", Progress(NOW - 600), NOW + LEASE)
    assert backend.end_reconciliation("vapi", "a", RunOutcome(NOW + 5, queued=3))
    for at, error in ((NOW + 900, "VAPI answered 503"), (NOW + 1800, "VAPI answered 502")):
        backend.lease_reconciliation("vapi", "a", at, at + LEASE)
        backend.end_reconciliation("vapi", "a", RunOutcome(at, queued=1, error=error))
    [state] = backend.reconciliations()
    assert (state.last_run_at, state.last_queued, state.last_error) == (NOW + 1800, 1, "VAPI answered 502")
    assert state.last_success_at == NOW + 5 and state.failing_since == NOW + 900
    assert state.reconciled_until == NOW - 600 and state.lease_owner is None

    backend.lease_reconciliation("vapi", "b", NOW + 2700, NOW + 2700 + LEASE)
    backend.end_reconciliation("vapi", "b", RunOutcome(NOW + 2700, queued=0))
    [state] = backend.reconciliations()
    assert state.last_error is None and state.failing_since is None and state.last_success_at == NOW + 2700


def test_a_stopped_run_releases_its_lease_and_records_nothing(backend):
    backend.lease_reconciliation("vapi", "a", NOW, NOW + LEASE)
    assert backend.end_reconciliation("vapi", "a", None)
    [state] = backend.reconciliations()
    assert state.lease_owner is None and state.last_run_at is None and not state.running(NOW)
    assert backend.lease_reconciliation("vapi", "b", NOW + 1, NOW + LEASE) is not None


def test_held_names_the_dedupe_keys_stored_for_that_provider(backend):
    backend.insert_many([NewDelivery("vapi", "end-of-call-report", "c1", "k1", b"{}", NOW),
                         NewDelivery("retell", "call_ended", "c2", "k2", b"{}", NOW)], NOW)
    assert backend.held("vapi", ["k1", "k2", "k3"]) == {"k1"}
    assert backend.held("retell", []) == set()


def test_instances_racing_for_the_lease_let_exactly_one_through(outbox_url):
    stores = [open_backend(outbox_url) for _ in range(6)]
    stores[0].migrate()
    winners: list[int] = []
    start = threading.Barrier(len(stores))

    def race(n: int) -> None:
        start.wait()
        if stores[n].lease_reconciliation("vapi", f"instance-{n}", NOW, NOW + LEASE) is not None:
            winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(stores))]
    with contextlib.ExitStack() as cleanup:
        for store in stores:
            cleanup.callback(store.close)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(winners) == 1
