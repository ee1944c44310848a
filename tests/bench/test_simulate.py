"""bench/simulate.py: the network model, a tiny swarm checked piece by piece, determinism, and that the policies
it runs are the project's own."""

from __future__ import annotations

import collections
import math
import os
import random

import attrs
import pytest
import simulate
from _sim_net import Loop, Net
from _sim_p2p import Blob, World

from kraken.core.metainfo import MetaInfo
from kraken.p2p import dispatch
from kraken.p2p.config import P2PConfig

MIB = 1 << 20


def finish_times(net: Net, flows: list[tuple[int, int, int, float]]) -> list[float]:
    """Start each (src, dst, size, at) flow and return when each finished."""
    done: list[float] = [math.nan] * len(flows)
    for i, (src, dst, size, at) in enumerate(flows):

        def start(i: int = i, src: int = src, dst: int = dst, size: int = size) -> None:
            net.start(src, dst, size, lambda: done.__setitem__(i, net.loop.now))

        net.loop.later(at, start)
    net.loop.run()
    return done


def test_a_single_flow_runs_at_the_smaller_cap() -> None:
    net = Net(Loop(), latency=0.0)
    a, b = net.add_host(up=100.0, down=1000.0), net.add_host(up=1000.0, down=50.0)
    assert finish_times(net, [(a, b, 500, 0.0)]) == [pytest.approx(10.0)]  # b's downlink: 50 B/s
    assert net.sent[a] == 500


def test_two_flows_share_a_link_and_the_survivor_speeds_up() -> None:
    net = Net(Loop(), latency=0.0)
    src = net.add_host(up=100.0, down=100.0)
    x, y = net.add_host(up=100.0, down=100.0), net.add_host(up=100.0, down=100.0)
    # Both at 50 B/s until the small one ends at 4 s (200 B each); the big one then has 600 B left at 100 B/s.
    assert finish_times(net, [(src, x, 200, 0.0), (src, y, 800, 0.0)]) == [pytest.approx(4.0), pytest.approx(10.0)]


def test_a_flow_that_joins_late_slows_the_first_down_from_then_on() -> None:
    net = Net(Loop(), latency=0.0)
    a, b, c = (net.add_host(up=100.0, down=100.0) for _ in range(3))
    # a->c alone for 2 s (200 B), then shares c's downlink with b->c at 50 B/s each until b->c ends at 4 s (a->c has
    # 100 B left), then alone again at 100 B/s.
    assert finish_times(net, [(a, c, 400, 0.0), (b, c, 100, 2.0)]) == [pytest.approx(5.0), pytest.approx(4.0)]


def test_a_cancelled_flow_frees_its_share_and_never_finishes() -> None:
    net = Net(Loop(), latency=0.0)
    a, b, c = (net.add_host(up=100.0, down=100.0) for _ in range(3))
    done: list[str] = []
    first = net.start(a, b, 1000, lambda: done.append("first"))
    net.start(a, c, 300, lambda: done.append("second"))
    net.loop.later(2.0, net.cancel, first)
    net.loop.run()
    assert done == ["second"] and net.loop.now == pytest.approx(4.0)  # 100 B at 50 B/s, then 200 B at 100 B/s


def test_messages_arrive_one_latency_later() -> None:
    net = Net(Loop(), latency=0.25)
    seen: list[tuple[str, float]] = []
    net.loop.later(1.0, lambda: net.send(lambda m: seen.append((m, net.loop.now)), "hello"))
    net.loop.run()
    assert seen == [("hello", pytest.approx(1.25))]


def test_the_network_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Net(Loop(), latency=-1.0)
    with pytest.raises(ValueError):
        Net(Loop(), latency=0.0).add_host(up=0.0, down=1.0)


def test_events_run_in_the_order_they_were_scheduled_whether_batched_or_not() -> None:
    loop = Loop()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        loop.post(0.0, seen.append, "scheduled while the batch ran")  # after the whole batch, not inside it

    loop.post(1.0, first)
    loop.post(1.0, seen.append, "second")  # same instant, consecutive: one heap entry
    cancelled = loop.later(1.0, seen.append, "cancelled")
    loop.later(1.0, seen.append, "third")
    loop.post(0.5, seen.append, "earlier")  # ends the batch; the next one at 1.0 is a new entry
    loop.post(1.0, seen.append, "fourth")
    cancelled.cancel()
    loop.run()
    assert seen == ["earlier", "first", "second", "third", "fourth", "scheduled while the batch ran"]
    assert loop.events == 6


def test_a_run_stopped_inside_a_batch_resumes_where_it_stopped() -> None:
    loop = Loop()
    seen: list[int] = []
    for i in range(4):
        loop.post(1.0, seen.append, i)
    loop.run(done=lambda: len(seen) == 2)
    assert seen == [0, 1]
    loop.run()
    assert seen == [0, 1, 2, 3]


def test_cancelled_events_are_swept_off_the_heap() -> None:
    loop = Loop()
    seen: list[int] = []
    for i in range(200_000):
        event = loop.later(float(i), seen.append, i)
        if i % 1000:
            event.cancel()  # a timer stopped: it stays on the heap until the next sweep
    assert len(loop._heap) < 1 << 16
    loop.run()
    assert seen == list(range(0, 200_000, 1000)) and loop.events == 200


def test_flows_with_the_same_end_finish_in_the_order_their_ends_were_set() -> None:
    net = Net(Loop(), latency=0.0)
    hosts = [net.add_host(up=100.0, down=100.0) for _ in range(6)]
    done: list[str] = []
    net.start(hosts[0], hosts[1], 300, lambda: done.append("a"))  # ends at 4.0, after its rate fell and rose
    net.start(hosts[2], hosts[3], 200, lambda: done.append("b"))  # ends at 2.0, set before the message's
    net.loop.post(2.0, done.append, "message")
    net.loop.later(1.0, lambda: net.start(hosts[0], hosts[4], 100, lambda: done.append("c")))  # a at 50 B/s until 3.0
    net.loop.later(1.5, lambda: net.start(hosts[5], hosts[2], 250, lambda: done.append("d")))  # 4.0, set before a's
    net.loop.run()
    assert done == ["b", "message", "c", "d", "a"] and net.loop.now == 4.0


def test_random_flows_finish_when_a_step_by_step_recomputation_says() -> None:
    rng = random.Random(11)
    caps = [(rng.choice([50.0, 100.0, 200.0]), rng.choice([50.0, 100.0, 200.0])) for _ in range(6)]
    flows = []
    for _ in range(40):
        src, dst = rng.sample(range(6), 2)
        flows.append((src, dst, rng.randint(10, 400), rng.uniform(0.0, 20.0)))
    net = Net(Loop(), latency=0.0)
    for up, down in caps:
        net.add_host(up=up, down=down)
    assert finish_times(net, flows) == pytest.approx(stepped(caps, flows))


def stepped(caps: list[tuple[float, float]], flows: list[tuple[int, int, int, float]]) -> list[float]:
    """The reference: every rate recomputed from scratch between one start or end and the next."""
    now, left, done = 0.0, [float(size) for _, _, size, _ in flows], [math.nan] * len(flows)
    while any(math.isnan(t) for t in done):
        running = [i for i, f in enumerate(flows) if f[3] <= now + 1e-12 and math.isnan(done[i])]
        ups = collections.Counter(flows[i][0] for i in running)
        downs = collections.Counter(flows[i][1] for i in running)
        rate = {
            i: min(caps[flows[i][0]][0] / ups[flows[i][0]], caps[flows[i][1]][1] / downs[flows[i][1]]) for i in running
        }
        starts = [f[3] for f in flows if f[3] > now + 1e-12]
        step = min([left[i] / rate[i] for i in running] + [s - now for s in starts])
        for i in running:
            left[i] -= rate[i] * step
            if left[i] <= 1e-9:
                done[i] = now + step
        now += step
    return done


def tiny_world(seed: int = 7, config: P2PConfig | None = None) -> tuple[World, list, Blob]:
    world = World(seed=seed, latency=0.001, handshake_delay=0.01, agent=config)
    blob = Blob("tiny", 200_000, piece_length=16_384, data=os.urandom(200_000))
    world.add_origin(1e6, 1e6, [blob])
    agents = [world.add_agent(1e6, 1e6) for _ in range(3)]
    for agent in agents:
        world.pull(agent, [blob], jitter=0.05)
    return world, agents, blob


def test_a_tiny_swarm_completes_with_every_piece_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    world, agents, blob = tiny_world()
    checked: list[int] = []
    real = MetaInfo.piece_ok
    monkeypatch.setattr(MetaInfo, "piece_ok", lambda self, i, data: checked.append(i) or real(self, i, data))
    world.run(until=600.0)
    assert not world.pulling
    for agent in agents:
        torrent = agent.torrents["tiny"]
        assert torrent.complete and torrent.have.complete() and agent.done_at() is not None
    assert sorted(checked) == sorted(list(range(blob.num_pieces)) * 3)  # every piece of every agent, once
    # At least the ideal (size over the cap) and the origin sent at least one copy.
    assert min(a.done_at() for a in agents) >= 0.2
    assert world.egress[-1][1] >= blob.size


def test_a_corrupt_piece_is_caught() -> None:
    world, _, blob = tiny_world()
    blob.data = bytes(blob.size)  # the flows now carry other bytes than the metainfo's
    world.run(until=60.0)
    assert world.counts["corrupt_pieces"] > 0 and world.pulling  # refused as leech._write does: nobody finishes


def test_a_bug_in_a_callback_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    world, _, _ = tiny_world()

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(world, "_answered_piece", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        world.run(until=600.0)


def small(**kw) -> simulate.Setup:
    return simulate.testbed(8, 8 * MIB, 20e6, **kw)


def test_the_same_seed_gives_the_same_result_and_another_seed_another() -> None:
    first, again, other = (simulate.simulate(small(seed=s)) for s in (3, 3, 4))
    assert first.times == again.times and first.egress == again.egress and first.counts == again.counts
    assert first.times != other.times


def test_the_policies_are_the_projects(monkeypatch: pytest.MonkeyPatch) -> None:
    base = simulate.simulate(small())
    shallow = simulate.simulate(small(agent_config=attrs.evolve(P2PConfig(), pipeline_limit=3)))
    assert shallow.events != base.events  # P2PConfig's pipeline depth (1 by default) reaches the dispatcher
    origin = simulate.simulate(small(agent_config=attrs.evolve(P2PConfig(), origin_pipeline_limit=1)))
    assert origin.times != base.times  # and so does the depth towards origins
    calls: list[str] = []
    real = dispatch.Dispatcher.next_requests

    def spy(self, peer_id: str, now: float) -> list[int]:
        calls.append(peer_id)
        return real(self, peer_id, now)

    monkeypatch.setattr(dispatch.Dispatcher, "next_requests", spy)
    assert simulate.simulate(small()).times == base.times and calls  # the very class in kraken/p2p/dispatch.py


def test_results_table_plots_and_json(tmp_path) -> None:
    result = simulate.simulate(small())
    assert all(math.isfinite(t) for t in result.times) and len(result.times) == 8
    assert 1.0 <= result.ratio(0.5) <= result.ratio(0.99) <= result.ratio(1.0)
    assert "testbed-8-8MiB" in simulate.table([result])
    assert "| 8 MiB | 8 |" in simulate.validation_table([result])
    paths = simulate.plot([result], str(tmp_path), "t")
    assert all(os.path.getsize(p) > 1000 for p in paths)
    simulate.dump([result], str(tmp_path / "r.json"))
    assert (tmp_path / "r.json").read_text().startswith("[")


def test_the_command_runs_a_smoke_scenario_of_twenty_hosts(capsys) -> None:
    assert simulate.main(["--scenario", "testbed", "--agents", "20", "--size", "4MiB", "--rate", "100Mbit"]) == 0
    assert "| testbed-20-4MiB | 20 |" in capsys.readouterr().out


def test_measured_ranges() -> None:
    assert not simulate._off(1.5, "1.41-1.64") and simulate._off(1.2, "1.41-1.64") and simulate._off(1.9, "1.64")
