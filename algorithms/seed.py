"""The seed balancer: refined packing and hybrid replication together."""

from functools import partial

from eplb_bench import register

from ._hierarchy import Steps, rebalance_with
from .hybrid_replication import hybrid_replication
from .refined_packing import refined_packing

SEED_STEPS = Steps(
    pack_groups=partial(refined_packing, refine_steps=1),
    replicate=hybrid_replication,
    pack_replicas=partial(refined_packing, refine_steps=2),
)


@register("seed", description="the seed: refined packing plus hybrid replication")
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract."""
    return rebalance_with(SEED_STEPS, weight, num_replicas, num_groups, num_nodes, num_gpus)
