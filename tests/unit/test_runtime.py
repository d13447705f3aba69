import gc

from relay.core import runtime


def test_the_young_generation_is_collected_less_often_and_the_older_ones_as_before():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        runtime.collect_garbage_less_often()
        assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*before)
