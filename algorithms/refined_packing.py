"""DeepSeek's EPLB with the seed's bounded swap refinement after each greedy packing.

After the greedy fill, each layer gets at most `refine_steps` swaps between its
heaviest and its lightest pack. The swap exchanges one heavy-pack item with the
light-pack item whose weight is nearest to `heavy - gap / 2` (the exchange that
would close the gap exactly), and happens only when it strictly narrows the gap.
Groups to nodes use one step, replicas to GPUs two.
"""

from functools import partial

import torch

from eplb_bench import register

from ._hierarchy import Steps, greedy_packing, greedy_replication, rebalance_with

GAP_TOLERANCE = 1e-9


def _best_swap(weight: torch.Tensor, heavy: torch.Tensor, light: torch.Tensor, gap: float):
    """Best heavy<->light exchange of one layer, or None when none narrows the gap.

    Args:
        weight: [n] item weights; heavy, light: item indices of the two packs.
    Returns:
        (heavy item, light item) to exchange, or None.
    """
    heavy_weight = weight[heavy]
    light_sorted, light_order = weight[light].sort()
    # Exchanging h and l moves the gap to |gap - 2 (w_h - w_l)|: look for w_l near w_h - gap/2.
    position = torch.searchsorted(light_sorted, heavy_weight - gap / 2).clamp(max=len(light) - 1)
    candidates = torch.stack([position, (position - 1).clamp(min=0)], dim=1)
    new_gap = (gap - 2 * (heavy_weight.unsqueeze(1) - light_sorted[candidates])).abs()
    best = int(new_gap.argmin())
    heavy_pick, option = divmod(best, 2)
    if float(new_gap.view(-1)[best]) >= gap - GAP_TOLERANCE:
        return None
    return int(heavy[heavy_pick]), int(light[light_order[candidates[heavy_pick, option]]])


def refine_packing(
    weight: torch.Tensor, pack_index: torch.Tensor, rank_in_pack: torch.Tensor, num_packs: int, refine_steps: int
) -> None:
    """Apply up to `refine_steps` heaviest<->lightest swaps per row, in place.

    Args:
        weight: [X, n]; pack_index, rank_in_pack: [X, n], changed in place. A swapped
        item takes over the pack and the rank of the item it is exchanged with.
    """
    weight = weight.double()
    for row in range(weight.shape[0]):
        for _ in range(refine_steps):
            loads = torch.zeros(num_packs, dtype=torch.float64).scatter_add_(0, pack_index[row], weight[row])
            heaviest, lightest = int(loads.argmax()), int(loads.argmin())
            gap = float(loads[heaviest] - loads[lightest])
            if gap <= GAP_TOLERANCE:
                break
            heavy = (pack_index[row] == heaviest).nonzero().squeeze(1)
            light = (pack_index[row] == lightest).nonzero().squeeze(1)
            swap = _best_swap(weight[row], heavy, light, gap)
            if swap is None:
                break
            pair = list(swap)
            pack_index[row, pair] = pack_index[row, pair[::-1]].clone()
            rank_in_pack[row, pair] = rank_in_pack[row, pair[::-1]].clone()


def refined_packing(weight: torch.Tensor, num_packs: int, refine_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy packing followed by the bounded swap refinement.

    Args:
        weight: [X, n] item weights. Returns pack_index, rank_in_pack: [X, n].
    """
    pack_index, rank_in_pack = greedy_packing(weight, num_packs)
    if weight.shape[1] // num_packs > 1 and refine_steps > 0:
        refine_packing(weight, pack_index, rank_in_pack, num_packs, refine_steps)
    return pack_index, rank_in_pack


REFINED_STEPS = Steps(
    pack_groups=partial(refined_packing, refine_steps=1),
    replicate=greedy_replication,
    pack_replicas=partial(refined_packing, refine_steps=2),
)


@register("refined_packing", description="DeepSeek's EPLB plus the seed's bounded swap refinement in packing")
def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """weight: [num_layers, num_logical] -> (phy2log, log2phy, logcnt), see eplb_bench.core.contract."""
    return rebalance_with(REFINED_STEPS, weight, num_replicas, num_groups, num_nodes, num_gpus)
