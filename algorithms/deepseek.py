"""DeepSeek's original EPLB (deepseek-ai/EPLB): greedy packing and greedy replication,
computed the way the reference computes them, so that its runtime is the reference's."""

from eplb_bench import register

from ._hierarchy import Steps, greedy_replication, rebalance_with, scan_packing

DEEPSEEK_STEPS = Steps(
    pack_groups=scan_packing,
    replicate=greedy_replication,
    pack_replicas=scan_packing,
)


@register("deepseek", description="DeepSeek's original greedy EPLB (hierarchical or global)")
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract."""
    return rebalance_with(DEEPSEEK_STEPS, weight, num_replicas, num_groups, num_nodes, num_gpus)
