from relay.budget import BodyHold, ByteBudget


def test_a_pool_refuses_what_would_take_it_past_its_limit():
    pool = ByteBudget(100)
    assert pool.take(60) and not pool.take(41) and pool.take(40)
    pool.give_back(100)
    assert pool.held == 0


def test_one_body_alone_always_fits():
    # A single webhook up to the size limit must never be refused by an idle relay.
    assert ByteBudget(10).take(1000)


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
