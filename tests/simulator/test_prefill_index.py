"""Every replica the simulator's index picks for a prompt is the one the live router's
`rank_for_prefill` puts first among all the pool's accepting replicas at that moment, through
a run that grows and shrinks the pool and drains replicas."""

from __future__ import annotations

from test_cluster import COST, NET, spec

from router.replica_choice import ReplicaLoad, rank_for_prefill
from simulator.cluster import SimCluster, SimOptions
from simulator.scenario import check_no_leaks
from simulator.workload import poisson_arrivals, synthetic


class CheckedCluster(SimCluster):
    """Asks the index, then the live ranking over every accepting replica, and compares."""

    checked = 0

    def _rank_prefill(self, pool, site, req):
        chosen = super()._rank_prefill(pool, site, req)
        replicas = [r for r in site.replicas.get(pool, ()) if r.accepting]
        loads = [ReplicaLoad(r.replica_id, r.queued_prefill_tokens, r.num_running, r.num_waiting,
                             r.block_manager.num_free_blocks, r.block_manager.num_blocks) for r in replicas]
        e = self.spec.engine
        ranked = rank_for_prefill(loads, (), req.prompt_tokens, affinity_tokens_per_block=e.block_size,
                                  block_size=e.block_size, imbalance_tokens=4 * e.chunk_size)
        assert (chosen.replica_id if chosen else None) == (ranked[0] if ranked else None)
        self.checked += 1
        return chosen


def test_index_picks_the_live_rankings_first_through_scaling():
    options = SimOptions(cold_start_s=2.0, control_interval_s=1.0, qos_admission=False,
                         autoscaler_overrides={"cooldown_s": 3.0, "request_window_s": 5.0})
    sim = CheckedCluster(spec(min_replicas=1, max_replicas=12), COST, NET, options)
    burst = poisson_arrivals(60.0, 15.0, seed=1)
    lull = 15.0 + poisson_arrivals(2.0, 30.0, seed=2)
    requests = sim.run(synthetic(list(burst) + list(lull), (180, 12), seed=1))
    assert sim.checked >= len(requests)
    assert any(d["to"] > d["from"] for d in sim.decisions) and any(d["to"] < d["from"] for d in sim.decisions)
    assert all(r.outcome == "ok" for r in requests)
    assert not check_no_leaks(sim)
