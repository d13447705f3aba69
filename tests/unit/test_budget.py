from relay.core.budget import BodyHold, ByteBudget


def test_a_pool_refuses_what_would_take_it_past_its_limit():
    pool = ByteBudget(100)
    assert pool.take(60) and not pool.take(41) and pool.take(40)
    pool.give_back(100)
    assert pool.held == 0


def test_one_body_alone_always_fits():
    # A single webhook up to the size limit must never be refused by an idle relay.
    assert ByteBudget(10).take(1000)
    hold = BodyHold(ByteBudget(10))
    assert all(hold.grow(100) for _ in range(10)), "a body growing alone was refused on the way"


def test_a_hold_moves_between_pools_and_gives_everything_back():
    unverified, verified = ByteBudget(100), ByteBudget(100)
    hold = BodyHold(unverified)
    assert hold.grow(30) and hold.grow(20)
    verified.take(70)
    assert not hold.move_to(verified)  # 70 + 50 > 100: stays where it is
    assert unverified.held == 50 and hold.pool is unverified
    verified.give_back(70)
    assert hold.move_to(verified) and (unverified.held, verified.held) == (0, 50)
    hold.release()
    assert verified.held == 0 and hold.size == 0


def test_one_client_holds_at_most_its_share_and_others_still_get_in():
    pool = ByteBudget(100, per_client=30)
    greedy = [BodyHold(pool, "10.0.0.1") for _ in range(3)]
    assert greedy[0].grow(25)
    assert greedy[1].grow(5) and not greedy[1].grow(1), "a client went past its share"
    assert not greedy[2].grow(1)
    other = BodyHold(pool, "10.0.0.2")
    assert other.grow(30)
    assert pool.client_held("10.0.0.1") == 30 and pool.held == 60


def test_a_clients_first_body_always_fits_its_share():
    pool = ByteBudget(100, per_client=10)
    alone = BodyHold(pool, "10.0.0.1")
    assert alone.grow(50), "one body from a client with nothing else held was refused"
    alone.release()
    assert pool.held == 0 and pool.client_held("10.0.0.1") == 0


def test_moving_to_a_pool_without_shares_gives_the_client_share_back():
    unverified, verified = ByteBudget(100, per_client=30), ByteBudget(100)
    hold = BodyHold(unverified, "10.0.0.1")
    assert hold.grow(30) and hold.move_to(verified)
    assert unverified.client_held("10.0.0.1") == 0 and verified.held == 30
    assert BodyHold(unverified, "10.0.0.1").grow(30)
