"""sim/events.py: the bare events take the queue places Timeouts would, so the simulation
keeps its event order (and its floats) event for event."""

import simpy

from sim.events import Arrival, call_later


def test_call_later_fires_in_the_order_timeouts_would():
    env = simpy.Environment()
    fired = []
    # equal times: insertion order decides, bare and Timeout events alike
    env.timeout(1.0).callbacks.append(lambda _ev: fired.append("timeout a"))
    call_later(env, 1.0, lambda ev: fired.append(ev.value), "call b")
    env.timeout(1.0).callbacks.append(lambda _ev: fired.append("timeout c"))
    call_later(env, 0.5, lambda ev: fired.append((ev.value, env.now)), "call early")
    env.run()
    assert fired == [("call early", 0.5), "timeout a", "call b", "timeout c"]
    assert env.now == 1.0


def test_arrival_wakes_a_process_at_the_time_set_later_with_its_value():
    env = simpy.Environment()
    got = []
    ev = Arrival(env)

    def worker():
        value = yield ev
        got.append((env.now, value))

    env.process(worker())
    call_later(env, 0.25, lambda _c: ev.succeed_at(2.0, 7))  # its time is known only at 0.25
    env.run()
    assert got == [(2.0, 7)]
