"""The outbox contract. Every backend must pass this file unchanged."""

import threading

import pytest

from relay.core.errors import StoreUnavailable
from relay.outbox import Attempt, Completion, DeliveryFilter, NewDelivery, State, open_backend

NOW = 1_700_000_000.0
LEASE = 60.0


def new(call_id="call-1", provider="vapi", body=b'{"message": {}}', event="end-of-call-report"):
    return NewDelivery(provider, event, call_id, f"{event}:{call_id}", body, NOW)


def test_migrate_is_idempotent(backend):
    assert backend.migrate() == backend.migrate() >= 1


def test_insert_stores_the_raw_body_and_metadata(backend):
    body = '{"message": {"name": "Zoë 日本語"}}'.encode()
    [inserted] = backend.insert_many([new(body=body)], NOW)
    assert not inserted.duplicate
    stored = backend.get(inserted.delivery_id)
    assert stored.body == body
    assert (stored.provider, stored.event, stored.call_id) == ("vapi", "end-of-call-report", "call-1")
    assert stored.state is State.PENDING and stored.attempts == 0
    assert stored.next_attempt_at == NOW and stored.received_at == NOW


def test_duplicates_collapse_onto_one_row(backend):
    first, again, other_provider, in_batch = backend.insert_many(
        [new(), new(), new(provider="retell"), new("call-2")], NOW
    )
    assert again.duplicate and again.delivery_id == first.delivery_id
    assert not other_provider.duplicate and not in_batch.duplicate
    [later] = backend.insert_many([new()], NOW + 5)
    assert later == again
    assert backend.counts()[State.PENDING] == 3


def test_claim_leases_due_rows_once(backend):
    backend.insert_many([new("a"), new("b"), new("c")], NOW)
    first = backend.claim("worker-1", NOW, LEASE, limit=2)
    assert len(first) == 2
    assert all(d.state is State.DELIVERING and d.attempts == 1 for d in first)
    assert all(d.lease_token == "worker-1" and d.lease_expires_at == NOW + LEASE for d in first)
    second = backend.claim("worker-2", NOW + 1, LEASE, limit=10)
    assert [d.call_id for d in second] == ["c"]
    assert backend.claim("worker-3", NOW + LEASE - 1, LEASE, limit=10) == []


def test_rows_not_yet_due_are_not_claimed(backend):
    [row] = backend.insert_many([new()], NOW)
    [_claimed] = backend.claim("w", NOW, LEASE, 1)
    backend.complete(row.delivery_id, "w", Completion(State.PENDING, NOW, next_attempt_at=NOW + 30))
    assert backend.claim("w2", NOW + 29, LEASE, 1) == []
    assert [d.id for d in backend.claim("w2", NOW + 30, LEASE, 1)] == [row.delivery_id]


def test_an_expired_lease_is_claimed_again_and_the_old_holder_is_locked_out(backend):
    [row] = backend.insert_many([new()], NOW)
    backend.claim("crashed", NOW, LEASE, 1)
    [again] = backend.claim("survivor", NOW + LEASE, LEASE, 1)
    assert again.id == row.delivery_id and again.attempts == 2
    late = Completion(State.DELIVERED, NOW + LEASE + 1, status_code=201)
    assert backend.complete(row.delivery_id, "crashed", late) is False
    assert backend.complete(row.delivery_id, "survivor", late) is True
    assert backend.get(row.delivery_id).state is State.DELIVERED


def test_delivered_keeps_roark_call_id_and_attempt_history(backend):
    [row] = backend.insert_many([new()], NOW)
    backend.claim("w", NOW, LEASE, 1)
    attempt = Attempt(1, NOW, 12.5, 201, None, "delivered")
    done = Completion(State.DELIVERED, NOW + 1, status_code=201, roark_call_id="rk-uuid", attempt=attempt)
    assert backend.complete(row.delivery_id, "w", done)
    stored = backend.get(row.delivery_id)
    assert stored.roark_call_id == "rk-uuid" and stored.delivered_at == NOW + 1
    assert stored.last_status == 201 and stored.lease_token is None
    assert backend.attempts(row.delivery_id) == [attempt]
    assert backend.claim("w", NOW + 10**6, LEASE, 10) == []


def test_failed_keeps_the_last_error(backend):
    [row] = backend.insert_many([new()], NOW)
    backend.claim("w", NOW, LEASE, 1)
    attempt = Attempt(1, NOW, 3.0, 400, "HTTP 400 invalid_parameter: bad", "giveup")
    backend.complete(row.delivery_id, "w", Completion(
        State.FAILED, NOW, status_code=400, error="HTTP 400 invalid_parameter: bad", attempt=attempt))
    stored = backend.get(row.delivery_id)
    assert stored.state is State.FAILED and stored.last_status == 400
    assert "invalid_parameter" in stored.last_error
    assert backend.counts() == {State.PENDING: 0, State.DELIVERING: 0, State.DELIVERED: 0, State.FAILED: 1}


def test_release_refunds_the_attempt(backend):
    [row] = backend.insert_many([new()], NOW)
    backend.claim("w", NOW, LEASE, 1)
    backend.complete(row.delivery_id, "w", Completion(State.PENDING, NOW, next_attempt_at=NOW, refund_attempt=True))
    stored = backend.get(row.delivery_id)
    assert stored.state is State.PENDING and stored.attempts == 0


def test_oldest_pending(backend):
    assert backend.oldest_pending_received_at() is None
    backend.insert_many([new("a")], NOW)
    backend.insert_many([NewDelivery("vapi", "e", "b", "e:b", b"{}", NOW - 50)], NOW)
    assert backend.oldest_pending_received_at() == NOW - 50


def test_concurrent_claims_never_share_a_row(backend):
    backend.insert_many([new(f"c{i}") for i in range(200)], NOW)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while rows := backend.claim(name, NOW, LEASE, 7):
            with lock:
                claimed.extend(d.id for d in rows)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 200


def test_unusable_location_raises_store_unavailable(tmp_path):
    store = open_backend(f"sqlite:///{tmp_path / 'missing-dir' / 'outbox.db'}")
    with pytest.raises(StoreUnavailable):
        store.migrate()
    with pytest.raises(StoreUnavailable):
        store.insert_many([new()], NOW)


def test_listing_is_newest_first_without_bodies_and_pages_stably(backend):
    backend.insert_many([new(f"c{i}") for i in range(5)], NOW)
    first = backend.list_deliveries(DeliveryFilter(), None, 2)
    assert [d.call_id for d in first] == ["c4", "c3"]
    assert all(d.body is None for d in first)
    backend.insert_many([new("late")], NOW)  # an insert between pages shifts nothing
    second = backend.list_deliveries(DeliveryFilter(), first[-1].id, 2)
    third = backend.list_deliveries(DeliveryFilter(), second[-1].id, 2)
    assert [d.call_id for d in second + third] == ["c2", "c1", "c0"]


def test_listing_filters(backend):
    backend.insert_many([new("abc-1"), new("abc-2", provider="retell"), new("xyz-1"), new("a%_")], NOW)
    [claimed] = backend.claim("w", NOW, LEASE, 1)
    backend.complete(claimed.id, "w", Completion(State.FAILED, NOW, error="boom"))

    def ids(where):
        return sorted(d.call_id for d in backend.list_deliveries(where, None, 50))

    assert ids(DeliveryFilter(provider="retell")) == ["abc-2"]
    assert ids(DeliveryFilter(call_id_prefix="abc")) == ["abc-1", "abc-2"]
    assert ids(DeliveryFilter(call_id_prefix="a%")) == ["a%_"]
    assert ids(DeliveryFilter(states=(State.FAILED,))) == [claimed.call_id]
    assert len(ids(DeliveryFilter(states=(State.PENDING, State.FAILED)))) == 4


def fail(backend, call_id):
    [row] = backend.insert_many([new(call_id)], NOW)
    [claimed] = backend.claim("w", NOW, LEASE, 1)
    assert claimed.id == row.delivery_id
    backend.complete(row.delivery_id, "w", Completion(State.FAILED, NOW, status_code=400, error="bad",
                                                     attempt=Attempt(1, NOW, 1.0, 400, "bad", "giveup")))
    return row.delivery_id


def test_replay_one_resets_attempts_and_is_idempotent(backend):
    failed = fail(backend, "f1")
    assert backend.replay([failed], DeliveryFilter(), NOW + 100) == [failed]
    again = backend.replay([failed], DeliveryFilter(), NOW + 101)
    assert again == [failed]
    stored = backend.get(failed)
    assert (stored.state, stored.attempts, stored.next_attempt_at) == (State.PENDING, 0, NOW + 101)
    assert len(backend.attempts(failed)) == 1  # history is kept
    # The retry budget starts over; the history's numbering runs on.
    [claimed] = backend.claim("w", NOW + 200, LEASE, 1)
    assert claimed.attempts == 1
    backend.complete(failed, "w", Completion(State.DELIVERED, NOW + 201, status_code=201,
                                             attempt=Attempt(1, NOW + 200, 5.0, 201, None, "delivered")))
    assert [a.attempt for a in backend.attempts(failed)] == [1, 2]


def test_the_tried_filter_keeps_deliveries_attempted_at_least_once(backend):
    fresh, tried = (r.delivery_id for r in backend.insert_many([new("fresh"), new("tried")], NOW))
    assert len(backend.claim("w", NOW, LEASE, 2)) == 2
    # Handed back untried (a shutdown refunds the attempt); and one that Roark refused.
    backend.complete(fresh, "w", Completion(State.PENDING, NOW, next_attempt_at=NOW, refund_attempt=True))
    backend.complete(tried, "w", Completion(State.PENDING, NOW, next_attempt_at=NOW + 60, status_code=503,
                                            attempt=Attempt(1, NOW, 1.0, 503, "HTTP 503", "retryat")))
    listed = backend.list_deliveries(DeliveryFilter((State.PENDING,), tried=True), None, 10)
    assert [row.id for row in listed] == [tried]


def test_replay_leaves_rows_in_flight_and_delivered_alone(backend):
    failed = fail(backend, "f1")
    backend.insert_many([new("busy"), new("done")], NOW)
    busy, done = backend.claim("w2", NOW, LEASE, 2)
    backend.complete(done.id, "w2", Completion(State.DELIVERED, NOW))
    assert backend.replay([failed, busy.id, done.id], DeliveryFilter(), NOW) == [failed]
    assert backend.get(busy.id).state is State.DELIVERING
    assert backend.complete(busy.id, "w2", Completion(State.DELIVERED, NOW))  # lease still valid


def test_replay_all_failed_with_a_filter(backend):
    a, b = fail(backend, "a"), fail(backend, "b")
    where = DeliveryFilter(states=(State.FAILED,), call_id_prefix="b")
    assert backend.replay(None, where, NOW) == [b]
    assert backend.replay(None, DeliveryFilter(states=(State.FAILED,)), NOW) == [a]
    assert backend.counts()[State.FAILED] == 0


def test_prune_deletes_only_old_rows_in_the_given_states(backend):
    backend.insert_many([NewDelivery("vapi", "e", "old", "e:old", b"{}", NOW - 100)], NOW)
    backend.insert_many([new("new")], NOW)
    for row in backend.claim("w", NOW, LEASE, 2):
        backend.complete(row.id, "w", Completion(State.DELIVERED, NOW))
    failed = fail(backend, "failed-old")
    assert backend.prune(NOW - 50, [State.DELIVERED], 100) == 1
    assert backend.prune(NOW + 1, [], 100) == 0
    assert sorted(d.call_id for d in backend.list_deliveries(DeliveryFilter(), None, 10)) == ["failed-old", "new"]
    assert backend.get(failed).state is State.FAILED


def test_prune_deletes_a_batch_at_a_time_and_the_webhooks_it_leaves_owed_to_no_one(backend):
    calls = [NewDelivery("vapi", "e", f"c{n}", f"e:c{n}", b"{}", NOW - 100, destinations=("roark", "crm"))
             for n in range(5)]
    backend.insert_many(calls, NOW)
    for destination in ("roark", "crm"):
        for row in backend.claim("w", NOW, LEASE, 10, destination=destination):
            backend.complete(row.id, "w", Completion(State.DELIVERED, NOW))
    assert backend.prune(NOW - 50, [State.DELIVERED], 3) == 3
    assert backend.prune(NOW - 50, [State.DELIVERED], 3) == 3
    assert backend.prune(NOW - 50, [State.DELIVERED], 3) == 3
    assert backend.prune(NOW - 50, [State.DELIVERED], 3) == 1
    assert backend.prune(NOW - 50, [State.DELIVERED], 3) == 0
    # Every webhook went with its last delivery: stored again, each is new.
    assert not any(r.duplicate for r in backend.insert_many(calls, NOW))


def test_counts_by_provider(backend):
    backend.insert_many([new("a"), new("b"), new("c", provider="retell")], NOW)
    counts = backend.counts_by_provider()
    assert counts["vapi"][State.PENDING] == 2 and counts["retell"][State.PENDING] == 1
    assert counts["vapi"][State.FAILED] == 0


def test_completions_in_one_batch_apply_only_where_the_lease_holds(backend):
    backend.insert_many([new(f"c{i}") for i in range(4)], NOW)
    a, b, c, d = backend.claim("w", NOW, LEASE, 4)
    backend.claim("late", NOW + LEASE, LEASE, 1)  # a's lease expired and was taken over
    attempt = Attempt(1, NOW, 1.0, 201, None, "delivered")
    done = Completion(State.DELIVERED, NOW + 1, status_code=201, attempt=attempt)
    retry = Completion(State.PENDING, NOW + 1, next_attempt_at=NOW + 30, status_code=503,
                       error="HTTP 503", attempt=Attempt(1, NOW, 1.0, 503, "HTTP 503", "retryat"))
    kept = backend.complete_many([(a.id, "w", done), (b.id, "w", done), (c.id, "w", retry),
                                  (d.id, "other", done), (b.id, "w", retry)])
    # a: lease lost; d: not our token; b twice: the first completion wins.
    assert kept == [False, True, True, False, False]
    assert backend.get(a.id).state is State.DELIVERING and backend.attempts(a.id) == []
    assert backend.get(b.id).state is State.DELIVERED and backend.attempts(b.id) == [attempt]
    stored = backend.get(c.id)
    assert (stored.state, stored.next_attempt_at, stored.last_status) == (State.PENDING, NOW + 30, 503)
    assert backend.get(d.id).state is State.DELIVERING


def test_a_claim_stops_at_its_byte_budget_but_takes_at_least_one(backend):
    backend.insert_many([new(f"c{i}", body=b"x" * 1000) for i in range(5)], NOW)
    assert len(backend.claim("w1", NOW, LEASE, 10, max_bytes=2500)) == 2
    assert len(backend.claim("w2", NOW, LEASE, 10, max_bytes=10)) == 1
    assert len(backend.claim("w3", NOW, LEASE, 10)) == 2


def test_revoked_sessions_are_remembered_until_they_would_expire(backend):
    assert not backend.session_revoked("nonce-1", NOW)
    backend.revoke_session("nonce-1", NOW + 100, NOW)
    backend.revoke_session("nonce-1", NOW + 100, NOW + 1)  # a second logout is harmless
    assert backend.session_revoked("nonce-1", NOW + 99)
    assert not backend.session_revoked("nonce-2", NOW + 99)
    backend.revoke_session("nonce-2", NOW + 300, NOW + 100)  # nonce-1's cookie is dead by now...
    assert not backend.session_revoked("nonce-1", NOW)  # ...so its row is gone
    assert backend.session_revoked("nonce-2", NOW + 299) and not backend.session_revoked("nonce-2", NOW + 300)


def test_ids_are_never_reused_after_the_newest_rows_are_pruned(backend):
    """An id in a log line or `relay replay 3` must never come to mean another webhook."""
    issued = [r.delivery_id for r in backend.insert_many(
        [NewDelivery("vapi", "e", call_id, f"e:{call_id}", b"{}", NOW - 100) for call_id in "abc"], NOW)]
    for row in backend.claim("w", NOW, LEASE, 3):
        backend.complete(row.id, "w", Completion(State.DELIVERED, NOW))
    assert backend.prune(NOW - 50, [State.DELIVERED], 100) == 3
    [again] = backend.insert_many([new("d")], NOW)
    assert again.delivery_id > max(issued)
