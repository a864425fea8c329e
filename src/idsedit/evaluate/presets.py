"""Named evaluation sizes. Any flag given on the command line overrides the preset's value.

    quick      CI-sized: one case per family (6), 2 steps, every method, two small ablations; every output file.
    standard   10 cases per family (60), 200 steps, every method, the paper's ablations on DDS and IDS:
               N in {0, 1, 2, 5}, lambda in {0.1, 0.3, 3, 10}, 100 steps, guidance 3 and 15, on the first 2 cases
               of each family (12); A -> B -> A for no-edit, DDS, CDS, IDS and IDS-JF (PAPER_INVERTED), not for
               the other runs. About 2.2 million UNet forward-equivalents: ~9 h of one core of a 2-core AVX2 CPU
               at 14.6 ms per forward-equivalent, ~2.7 h where it is 4.4 ms (docs/eval.md).
    full       as standard with 25 cases per family (150), ablations on 5 per family (30).
    drift      where the edits' drift comes from and what helps whom: DDS, CDS, PDS, IDS and IDS-JF on 4 colour and
               4 shape cases (one batch), 200 steps, each but CDS also with one remedy at a time (100 steps, a
               cosine lr decay, t's upper end annealed 949 -> 300, guidance 3; CDS edits as DDS on the mini prior,
               to 0.01 dB), no A -> B -> A; the drift curve every 20 steps.
    frontier   the cost-quality sweep: DDS and the IDS variants at 25 / 50 / 100 / 200 steps and N = 1, 2
               and every combination (quality against UNet forward-equivalents per edit), 4 cases per family.

Every preset edits the cases in batches (quick: 3, the others: 8 cases per batched edit; ``--batch 1``: one at a
time); results are those of unbatched edits to float tolerance (idsedit.evaluate.batching).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cases import FAMILIES


@dataclass(frozen=True)
class Preset:
    per_family: int
    steps: int
    methods: str = "no-edit,all"
    families: tuple[str, ...] = FAMILIES
    ablations: dict = field(default_factory=dict)   # setting -> values tried one at a time
    ablate_methods: str = "dds,ids"
    trace_every: int = 20           # decode every k steps for the drift curve (0: never)
    residual_cases: int = 6         # cases whose FPR residual curves are measured
    residual_ts: tuple[int, ...] = tuple(range(50, 950, 100))
    n_boot: int = 2000
    grid_cases: int = 12
    product: bool = False           # ablations: every combination (frontier) instead of one factor at a time
    batch: int = 8                  # cases per batched edit (runner.run_edits; docs/eval.md "Batched edits")
    ablation_per_family: int = 0    # ablation runs edit the first k cases of each family (0: every case)
    invert_ablations: tuple[str, ...] | None = None   # ablated settings whose runs get A -> B -> A (None: all)
    invert: bool = True             # the A -> B -> A edit at all (--no-invert turns it off)
    invert_methods: tuple[str, ...] | None = None      # main runs that get A -> B -> A (None: all)


PAPER_INVERTED = ("no-edit", "dds", "cds", "ids", "ids-jf")
"""The runs whose A -> B -> A edit the standard and full presets make: the paper's invertibility comparison (IDS
against DDS and CDS), IDS-JF (the fast preset's variant) and the round trip's reference; the other runs' A -> B -> A
would double their cost without bearing on a claim (``--invert-methods all`` adds them)."""

PRESETS: dict[str, Preset] = {
    "quick": Preset(per_family=1, steps=2, ablations={"fpr_iters": [1], "steps": [1]}, trace_every=1,
                    residual_cases=1, residual_ts=(100, 500, 900), n_boot=200, grid_cases=6, batch=3),
    "standard": Preset(per_family=10, steps=200,
                       ablations={"fpr_iters": [0, 1, 2, 5], "fpr_lambda": [0.1, 0.3, 3.0, 10.0], "steps": [100],
                                  "guidance": [3.0, 15.0]},
                       ablation_per_family=2, invert_ablations=(), invert_methods=PAPER_INVERTED),
    "full": Preset(per_family=25, steps=200,
                   ablations={"fpr_iters": [0, 1, 2, 5], "fpr_lambda": [0.1, 0.3, 3.0, 10.0], "steps": [100],
                              "guidance": [3.0, 15.0]},
                   ablation_per_family=5, invert_ablations=(), invert_methods=PAPER_INVERTED),
    "drift": Preset(per_family=4, steps=200, families=("colour", "shape"),
                    methods="no-edit,dds,cds,pds,ids,ids-jf",
                    ablations={"steps": [100], "lr_schedule": ["cosine"], "t_anneal_to": [300], "guidance": [3.0]},
                    ablate_methods="dds,pds,ids,ids-jf", invert=False, residual_cases=0, grid_cases=8),
    "frontier": Preset(per_family=4, steps=200, methods="no-edit,dds,ids,ids-jf,ids-adaptive",
                       ablations={"steps": [25, 50, 100], "fpr_iters": [1, 2]},
                       ablate_methods="dds,ids,ids-jf,ids-adaptive", residual_cases=0, product=True),
}
