"""Synthetic per-step expert loads of a MoE model, reproducible from a seed.

The model, one idea per function below:

- popularity: each layer's experts get normal scores (the normal quantiles in a random
  order) times the layer's spread (a few "hot" layers spread wider; with `spread_sigma`,
  every layer's spread also varies, lognormal around `logit_spread`); near-idle experts
  are pushed far down;
- tail shape: with `score_skew`, the scores bend lognormal-wise before the spread
  (a longer top, a shallower bottom);
- groups: with `group_spread`, each domain's scores share an offset per routing group,
  so that popular experts cluster in popular groups (the layer's score distribution stays);
- hot expert: with `hot_expert_gap`, each layer's best expert sits a logit gap above its
  second, exponential of that mean across layers: from two tied hottest experts to one
  far hotter expert (the expert max/mean tail) at a similar Gini;
- per-layer values (the lognormal spreads, the gaps) are their distribution's quantiles
  (rank + 0.5) / L in a random order of the layers, as the scores are;
- routing: per window, a sample of tokens routes through the logits with Gumbel noise,
  each token taking its top-k distinct experts, and for group-limited models only
  inside its top groups (group score: sum of its two best experts, as DeepSeek-V3);
  the hit counts give the window's expected expert shares;
- over-dispersion: each step draws its expert shares from a Dirichlet around the
  expected ones, then its routed tokens from a multinomial of those shares;
- time: within a phase the scores drift as a random walk from window to window; a
  new domain draws unrelated scores; a decode phase keeps its domain's scores only
  partly (correlation `decode_correlation`) and has its own tokens per step.

Steps are summed into windows of `window_steps` steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterator

import numpy as np
from scipy.special import ndtri

# Experts at most this far below the mean score get the odd token but stay near-idle.
IDLE_DEPTH = 4.0
# Smallest expected share, so that every expert can be routed to at all.
SHARE_FLOOR = 1e-7
# Row length of the blocks in which `kth_largest` selects in long rows.
SELECT_BLOCK = 128


@dataclass(frozen=True)
class Phase:
    """A run of windows served from one domain in one stage (prefill or decode)."""

    windows: int
    domain: int = 0
    stage: str = "prefill"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic load history (see the module docstring)."""

    num_layers: int
    num_logical: int
    top_k: int
    routing_groups: int = 1
    topk_groups: int = 0
    tokens_per_step: int = 8192
    decode_tokens_per_step: int = 2048
    window_steps: int = 100
    logit_spread: float = 1.0
    hot_layer_share: float = 0.1
    hot_layer_boost: float = 1.3
    spread_sigma: float = 0.0
    score_skew: float = 0.0
    hot_expert_gap: float = 0.0
    group_spread: float = 0.0
    idle_share: float = 0.0
    drift: float = 0.15
    decode_correlation: float = 0.65
    concentration: float = 100.0
    route_tokens: int = 2048
    phases: tuple[Phase, ...] = field(default=(Phase(6, 0, "prefill"), Phase(6, 1, "prefill")))
    seed: int = 0

    @property
    def num_windows(self) -> int:
        return sum(phase.windows for phase in self.phases)

    def as_dict(self) -> dict:
        values = asdict(self)
        values["phases"] = [asdict(phase) for phase in self.phases]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "SyntheticSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown generator parameters: {sorted(unknown)}")
        values = dict(values)
        values["phases"] = tuple(Phase(**phase) for phase in values.get("phases", ()))
        return cls(**values)


def standardized(scores: np.ndarray) -> np.ndarray:
    """scores: [L, E] -> normal scores of the same ranks, [L, E].

    Every layer gets exactly the normal quantiles (rank + 0.5) / E in the order of
    `scores`, so layers differ only by which expert is where and by their spread.
    """
    ranks = np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1, kind="stable")
    return ndtri((ranks + 0.5) / scores.shape[-1])


def layer_spreads(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """[L] logit spread of each layer: `logit_spread`, times `hot_layer_boost` on hot layers,
    times a lognormal factor of log-sd `spread_sigma` (median 1, at the layers' quantiles)."""
    spreads = np.full(spec.num_layers, spec.logit_spread)
    num_hot = round(spec.hot_layer_share * spec.num_layers)
    spreads[rng.choice(spec.num_layers, num_hot, replace=False)] *= spec.hot_layer_boost
    # Drawn only when asked for, so that specs without it keep their random stream.
    if spec.spread_sigma:
        spreads *= np.exp(spec.spread_sigma * ndtri(shuffled_quantiles(rng, spec.num_layers)))
    return spreads


def shuffled_quantiles(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n] the probabilities (rank + 0.5) / n in a random order.

    Per-layer parameters are these quantiles of their distribution, as the expert
    scores are the normal quantiles: the spread of a dataset's layers then does not
    depend on the seed, only which layer gets which value.
    """
    return (rng.permutation(n) + 0.5) / n


def hot_expert_gaps(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray | None:
    """[L] logit gap of each layer's hottest expert above its second, exponential of mean
    `hot_expert_gap` (at the layers' quantiles); None when it is 0 (the gap the normal
    quantiles give)."""
    # Drawn only when asked for, so that specs without it keep their random stream.
    if not spec.hot_expert_gap:
        return None
    return -spec.hot_expert_gap * np.log1p(-shuffled_quantiles(rng, spec.num_layers))


def skewed(scores: np.ndarray, skew: float) -> np.ndarray:
    """scores: [L, E] -> [L, E] `expm1(skew * scores) / skew` (the scores themselves at 0).

    Normal scores route to a top lighter and a bottom deeper than real layers have
    at the same Gini; a positive skew stretches the top scores and compresses the bottom
    ones (lognormal-shaped scores) while keeping the slope 1 at the median.
    """
    return np.expm1(skew * scores) / skew if skew else scores


def with_hot_expert(logits: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """logits: [L, E] -> the same array, each layer's best expert moved (in place) to
    `gaps` [L] above its second.

    The normal quantiles put every layer's best expert the same distance above its
    second; real layers range from two tied hottest experts to one far above the rest
    (the expert max/mean tail) at similar Gini, as the top spacing of a sample does
    (about exponential). The gap follows whichever expert is best, so the hot expert
    changes as the scores drift or the domain switches.
    """
    hottest = logits.argmax(-1)[:, None]
    np.put_along_axis(logits, hottest, (kth_largest(logits, 2) + gaps)[:, None], -1)
    return logits


def expert_logits(scores: np.ndarray, spreads: np.ndarray, offsets: np.ndarray, skew: float,
                  gaps: np.ndarray | None) -> np.ndarray:
    """Routing logits [L, E] of standardized scores [L, E]: skewed, times the layer spreads
    [L], plus the idle offsets [L, E], and with the hot expert gaps [L] unless None."""
    logits = spreads[:, None] * skewed(scores, skew) + offsets
    return logits if gaps is None else with_hot_expert(logits, gaps)


def idle_offsets(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """[L, E] logit offsets: `-IDLE_DEPTH * spread` on `idle_share` of each layer's experts."""
    offsets = np.zeros((spec.num_layers, spec.num_logical))
    num_idle = round(spec.idle_share * spec.num_logical)
    if num_idle:
        idle = np.argsort(rng.random(offsets.shape), axis=-1)[:, :num_idle]
        np.put_along_axis(offsets, idle, -IDLE_DEPTH * spec.logit_spread, axis=-1)
    return offsets


def route_shares(rng: np.random.Generator, logits: np.ndarray, spec: SyntheticSpec, chunk: int = 128) -> np.ndarray:
    """Expected expert shares from routing `route_tokens` sampled tokens.

    Tokens are routed `chunk` at a time; the chunk size changes neither the random
    stream (the Gumbel draws come in the same order) nor the shares.

    Args:
        logits: [L, E] expert scores.
    Returns:
        [L, E] shares, each row summing to 1.
    """
    num_layers, num_logical = logits.shape
    hits = np.zeros((num_layers, num_logical))
    for start in range(0, spec.route_tokens, chunk):
        tokens = min(chunk, spec.route_tokens - start)
        scores = rng.gumbel(size=(tokens, num_layers, num_logical))
        scores += logits
        if spec.topk_groups:
            scores = limit_to_top_groups(scores, spec.routing_groups, spec.topk_groups)
        hits += top_k_mask(scores, spec.top_k).sum(0)
    shares = hits / hits.sum(-1, keepdims=True) + SHARE_FLOOR
    return shares / shares.sum(-1, keepdims=True)


def limit_to_top_groups(scores: np.ndarray, num_groups: int, topk_groups: int) -> np.ndarray:
    """scores: [T, L, E] -> the same with experts outside each token's top groups at -inf."""
    tokens, layers, experts = scores.shape
    grouped = scores.reshape(tokens, layers, num_groups, experts // num_groups)
    group_score = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
    keep = top_k_mask(group_score, topk_groups)
    return np.where(keep[..., None], grouped, -np.inf).reshape(tokens, layers, experts)


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """scores: [..., N] -> [..., N] bool, True on each row's k largest.

    The k-th largest value decides every row without a tie at it; a row with one
    takes the k that `np.argpartition(-row, k - 1)[:k]` picks.
    """
    top = scores >= kth_largest(scores, k)[..., None]
    tied = np.count_nonzero(top, axis=-1) != k
    if tied.any():
        rows = scores[tied]
        picked = np.zeros(rows.shape, dtype=bool)
        np.put_along_axis(picked, np.argpartition(-rows, k - 1, axis=-1)[:, :k], True, axis=-1)
        top[tied] = picked
    return top


def kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """values: [..., N] -> [...] the k-th largest value of each row.

    Long rows go in blocks of SELECT_BLOCK: the k-th largest of the blocks' k largest
    is the row's, and numpy selects fastest in short rows.
    """
    n = values.shape[-1]
    if n > 2 * SELECT_BLOCK and n % SELECT_BLOCK == 0 and k <= SELECT_BLOCK:
        blocks = values.reshape(*values.shape[:-1], n // SELECT_BLOCK, SELECT_BLOCK)
        values = np.partition(blocks, SELECT_BLOCK - k, axis=-1)[..., SELECT_BLOCK - k:]
        values = values.reshape(*values.shape[:-2], -1)
        n = values.shape[-1]
    return np.partition(values, n - k, axis=-1)[..., n - k]


def step_loads(rng: np.random.Generator, shares: np.ndarray, routed: int, concentration: float) -> np.ndarray:
    """One over-dispersed step: shares [L, E] -> routed token counts [L, E] int64."""
    draw = rng.gamma(concentration * shares)
    draw /= draw.sum(-1, keepdims=True)
    return rng.multinomial(routed, draw)


def group_offsets(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray | float:
    """[L, E] score offsets shared by the experts of each routing group: `group_spread`
    times a normal draw per (layer, group); 0 when group_spread is 0 (nothing drawn).

    Added before standardizing, they leave each layer's score distribution as it was
    and only cluster the popular experts into popular groups, as real layers do (their
    group loads are far less even than a random order of the same experts gives).
    """
    if not spec.group_spread or spec.routing_groups <= 1:
        return 0.0
    per_group = rng.normal(size=(spec.num_layers, spec.routing_groups))
    return spec.group_spread * np.repeat(per_group, spec.num_logical // spec.routing_groups, axis=1)


def phase_scores(rng: np.random.Generator, spec: SyntheticSpec) -> list[np.ndarray]:
    """Standardized [L, E] expert scores at the start of each phase.

    Each domain's prefill scores are independent of every other domain's; a decode
    phase correlates with its domain's prefill scores by `decode_correlation`.
    """
    shape = (spec.num_layers, spec.num_logical)
    domains: dict[int, np.ndarray] = {}
    starts = []
    for phase in spec.phases:
        if phase.domain not in domains:
            domains[phase.domain] = standardized(rng.normal(size=shape) + group_offsets(rng, spec))
        base = domains[phase.domain]
        if phase.stage == "decode":
            rho = spec.decode_correlation
            base = standardized(rho * base + np.sqrt(1 - rho**2) * rng.normal(size=shape))
        starts.append(base)
    return starts


def iterate_steps(spec: SyntheticSpec, max_windows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (window index, routed token counts [L, E] int64) for every step of the
    history of `spec` (or of its first `max_windows` windows), in time order; a window
    is the sum of its `window_steps` steps. One random stream: any prefix is exactly
    the start of the full history."""
    rng = np.random.default_rng(spec.seed)
    spreads = layer_spreads(rng, spec)
    offsets = idle_offsets(rng, spec)
    gaps = hot_expert_gaps(rng, spec)
    total = spec.num_windows if max_windows is None else min(max_windows, spec.num_windows)
    window = 0
    for phase, scores in zip(spec.phases, phase_scores(rng, spec)):
        tokens = spec.decode_tokens_per_step if phase.stage == "decode" else spec.tokens_per_step
        for _ in range(phase.windows):
            if window == total:
                return
            shares = route_shares(rng, expert_logits(scores, spreads, offsets, spec.score_skew, gaps), spec)
            for _ in range(spec.window_steps):
                yield window, step_loads(rng, shares, tokens * spec.top_k, spec.concentration)
            scores = standardized(scores + spec.drift * rng.normal(size=scores.shape))
            window += 1


def generate(spec: SyntheticSpec, keep_steps: int = 0, max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate the load history of `spec`, or its first `max_windows` windows (iterate_steps).

    Returns:
        windows: [num_windows, L, E] int64, each the sum of `window_steps` steps;
        first_steps: [keep_steps, L, E] int64, the first steps of window 0.
    """
    total = spec.num_windows if max_windows is None else min(max_windows, spec.num_windows)
    windows = np.zeros((total, spec.num_layers, spec.num_logical), dtype=np.int64)
    kept = []
    for window, loads in iterate_steps(spec, max_windows):
        windows[window] += loads
        if window == 0 and len(kept) < keep_steps:
            kept.append(loads)
    first_steps = np.stack(kept) if kept else np.zeros((0, spec.num_layers, spec.num_logical), dtype=np.int64)
    return windows, first_steps


def all_steps(spec: SyntheticSpec, dtype=np.int64) -> np.ndarray:
    """[num_windows * window_steps, L, E] of `dtype`: every step of the history of `spec`."""
    steps = np.empty((spec.num_windows * spec.window_steps, spec.num_layers, spec.num_logical), dtype=dtype)
    for index, (_, loads) in enumerate(iterate_steps(spec)):
        steps[index] = loads
    return steps
