"""Training one GViT for several Gaussian budgets (``--budgets``, docs/flex.md): which budgets, and
which one each step trains."""

from __future__ import annotations

import math
import random


def parse_budgets(text: str) -> list[int]:
    """``'8,16,32,64'`` -> [8, 16, 32, 64]; a range ``'8-64'`` is every k from 8 to 64; items
    combine (``'4,8-12'``). Sorted, without repeats; a ValueError names a bad item."""
    budgets = set()
    for item in str(text).split(","):
        low, dash, high = item.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"--budgets: {item.strip()!r} is not a Gaussian count or a range such as 8-64 "
                             f"(give e.g. 8,16,32,64 or 8-64)") from None
        if not 1 <= first <= last:
            raise ValueError(f"--budgets: {item.strip()!r} must be counts >= 1, a range from low to high")
        budgets.update(range(first, last + 1))
    return sorted(budgets)


#: How a step's budgets are chosen: 'all', every budget at every step (Matryoshka-style: the
#: step's loss is the mean of each budget's; the trainer's default, the best at every k on
#: Imagenette, docs/flex.md); 'linear', one budget drawn per step, each budget's chance
#: proportional to its k (on the digits warm-up, 0.9 dB better at the largest k and 0.4 dB better
#: over all k than 'uniform'); or 'uniform', one budget per step, every budget equally often.
BUDGET_SAMPLINGS = ("linear", "uniform", "all")
#: The most budgets --budget-sampling all trains at every step; a range (8-64: 57 budgets) is
#: refused with it, as it would cost tens of steps' compute per step: draw from it instead
MAX_BUDGETS_EVERY_STEP = 8
#: How each budget's loss counts in a step over several budgets (--budget-sampling all): 'equal',
#: the mean (as Matryoshka representations train); 'sqrt' or 'linear', in proportion to sqrt(k) or k,
#: which moves the shared weights' effort towards the larger budgets; 'inverse-sqrt' or 'inverse',
#: in proportion to 1/sqrt(k) or 1/k, towards the smaller ones (normalised to sum to 1). Each
#: scheme's weight is k to the power given here
BUDGET_WEIGHT_EXPONENTS = {"equal": 0.0, "sqrt": 0.5, "linear": 1.0, "inverse-sqrt": -0.5, "inverse": -1.0}
BUDGET_WEIGHTS = tuple(BUDGET_WEIGHT_EXPONENTS)


def parse_budget_weights(spec: str) -> tuple[str, str]:
    """``--budget-weights`` -> (the scheme of the reconstruction losses, that of the classification
    losses): one of :data:`BUDGET_WEIGHTS` weights both, two as ``RECONSTRUCTION,CLASSIFICATION``
    each its own ('linear,equal': the reconstruction loss in proportion to k, the classification
    loss the mean)."""
    schemes = spec.split(",")
    if len(schemes) > 2 or any(scheme not in BUDGET_WEIGHTS for scheme in schemes):
        raise ValueError(f"budget weights must be one of {BUDGET_WEIGHTS}, or two of them as RECONSTRUCTION,CLASSIFICATION "
                         f"(e.g. linear,equal), got {spec!r}")
    return schemes[0], schemes[-1]


def budget_loss_weights(ks: list[int], scheme: str = "equal") -> list[float]:
    """The weight of each budget's loss in a step over the budgets ``ks``, as ``scheme`` (one of
    :data:`BUDGET_WEIGHTS`) says; they sum to 1 (8,16,32,64 'linear': 1/15, 2/15, 4/15, 8/15;
    'inverse': 8/15, 4/15, 2/15, 1/15)."""
    if scheme not in BUDGET_WEIGHTS:
        raise ValueError(f"budget weights must be one of {BUDGET_WEIGHTS}, got {scheme!r}")
    raw = [float(k) ** BUDGET_WEIGHT_EXPONENTS[scheme] for k in ks]
    return [w / sum(raw) for w in raw]


#: Which budgets a guidance step guides the encoder at: 'drawn', one budget drawn from (seed, step)
#: as --budget-sampling draws (in proportion to k for 'all'); 'largest', the largest budget on every guidance step; or 'all', every
#: budget, the step's loss their mean (as --budget-sampling all trains the normal steps). Left unset, the budgets the normal
#: steps train: every budget under --budget-sampling all (on Imagenette 1.4 to 3.8 points of top-1 ahead of 'drawn' after
#: the tag's dose, docs/flex.md), the drawn one under 'linear' or 'uniform'
GUIDANCE_BUDGETS = ("drawn", "largest", "all")


def draw_budget(budgets: list[int], seed: int, step: int, prefix: bool, sampling: str = "linear") -> tuple[int, int | None]:
    """The budget k that optimiser step ``step`` trains, drawn from ``budgets`` as ``sampling``
    says ('linear' or 'uniform'; 'all' draws as 'linear', for the guidance step), and with
    ``prefix`` a shorter budget, uniform over those below k, whose prefix of the step's Gaussians
    is also reconstructed (None for the smallest k, or without ``prefix``).

    A function of (seed, step) alone, the same on every process and for every micro-batch of the
    step: a resumed run draws what the uninterrupted one drew, and the global random state stays
    the model's.
    """
    if sampling not in BUDGET_SAMPLINGS:
        raise ValueError(f"sampling must be one of {BUDGET_SAMPLINGS}, got {sampling!r}")
    rng = random.Random(f"{seed}:{step}")
    k = rng.choices(budgets, weights=None if sampling == "uniform" else budgets)[0]
    shorter = [b for b in budgets if b < k]
    return k, (rng.choice(shorter) if prefix and shorter else None)


def step_budgets(budgets: list[int], seed: int, step: int, prefix: bool, sampling: str = "linear") -> list[tuple[int, int | None]]:
    """The (k, prefix) pairs optimiser step ``step`` trains, the step's loss being their mean:
    one pair drawn by :func:`draw_budget`, or with ``sampling='all'`` every budget in increasing
    order, each with its prefix (a shorter budget, uniform over those below it; None without
    ``prefix``) drawn from (seed, step) as :func:`draw_budget` draws one."""
    if sampling != "all":
        return [draw_budget(budgets, seed, step, prefix, sampling)]
    rng = random.Random(f"{seed}:{step}:all")
    return [(k, rng.choice(shorter) if prefix and (shorter := [b for b in budgets if b < k]) else None) for k in budgets]


def guidance_budgets(budgets: list[int], which: str | None, seed: int, step: int, sampling: str = "linear") -> list[int]:
    """The budgets the guidance step after optimiser step ``step`` guides the encoder at, as
    ``which`` (one of :data:`GUIDANCE_BUDGETS`) says: one drawn from (seed, step) as
    :func:`draw_budget` draws with ``sampling`` (the normal steps'; 'all' draws in proportion to
    k), the largest, or every budget in increasing order. ``None`` follows ``sampling``: every
    budget under 'all', else the drawn one."""
    if which is None:
        which = "all" if sampling == "all" else "drawn"
    if which not in GUIDANCE_BUDGETS:
        raise ValueError(f"guidance budgets must be one of {GUIDANCE_BUDGETS}, got {which!r}")
    if which == "all":
        return list(budgets)
    if which == "largest":
        return [max(budgets)]
    return [draw_budget(budgets, seed, step, False, sampling)[0]]


#: The most budgets validation reports unless --eval-budgets names them: each costs a validation pass
MAX_EVAL_BUDGETS = 8


def eval_budgets(budgets: list[int], text: str | None = None) -> list[int]:
    """The budgets validation reports for a flex model trained at ``budgets``: ``text`` parsed as
    :func:`parse_budgets` (each within ``[min(budgets), max(budgets)]``, the k the model serves),
    else every budget when there are at most :data:`MAX_EVAL_BUDGETS`, else that many spread
    evenly in log k, the smallest and the largest included (``8-64``: 8, 11, 15, 20, 26, 35, 48, 64)."""
    low, high = budgets[0], budgets[-1]
    if text is not None:
        chosen = parse_budgets(text)
        outside = [k for k in chosen if not low <= k <= high]
        if outside:
            raise ValueError(f"--eval-budgets {text}: {outside} outside --budgets, which serve {low} to {high} Gaussians")
        return chosen
    if len(budgets) <= MAX_EVAL_BUDGETS:
        return list(budgets)
    steps = MAX_EVAL_BUDGETS - 1
    return sorted({min(budgets, key=lambda b: abs(math.log(b) - (math.log(low) + i / steps * math.log(high / low)))) for i in range(steps + 1)})
