"""Table 2 on shapes as a table: its rows and sections, the paper's numbers, and the markdown table and
the figure `ablate.py` makes from the runs (mean and spread over seeds beside the paper's values).

Naming:
    row        (section, variant, stride, label); the first row of a section is its baseline
    run        one variant at one stride over the seeds: {"per_seed", "mean", "std", ...}
    run_key    "variant@stride", the key of a run (and the name of its folder)
"""

import numpy as np

# (section, variant, stride, row label); the first row of a section is its baseline
TABLE = [
    ("2b", "roi_align", 16, "sigmoid, class-specific"),
    ("2b", "softmax_masks", 16, "softmax (multinomial)"),
    ("2b", "class_agnostic_masks", 16, "sigmoid, class-agnostic"),
    ("2c", "roi_align", 16, "RoIAlign avg"),
    ("2c", "roi_align_max", 16, "RoIAlign max"),
    ("2c", "roi_warp", 16, "RoIWarp avg"),
    ("2c", "roi_warp_max", 16, "RoIWarp max"),
    ("2c", "roi_pool", 16, "RoIPool"),
    ("2d", "roi_align", 32, "RoIAlign, stride 32"),
    ("2d", "roi_pool", 32, "RoIPool, stride 32"),
    ("2e", "roi_align", "fpn", "FCN mask head (FPN)"),
    ("2e", "mlp_mask_head", "fpn", "MLP mask head (FPN)"),
    ("aligned", "roi_align", 16, "aligned=True"),
    ("aligned", "roi_align_unaligned", 16, "aligned=False"),
]
SECTIONS = {"2b": "Table 2b: mask loss and class-specific masks (stride 16)",
            "2c": "Table 2c: RoI layers (stride 16)",
            "2d": "Table 2d: RoIPool vs RoIAlign at stride 32, box and mask AP",
            "2e": "Table 2e: mask head (every FPN level)",
            "aligned": "RoIAlign's half-pixel shift (not in the paper; stride 16)"}

# Mask R-CNN (He et al. 2017), Table 2 (and the text of section 4.2 for class-agnostic masks):
# COCO minival AP, AP50, AP75 of the masks ("segm") and, in 2d, of the boxes ("bbox").
PAPER = {
    ("2b", "roi_align"): {"segm": (30.3, 51.2, 31.5)},
    ("2b", "softmax_masks"): {"segm": (24.8, 44.1, 25.1)},
    ("2b", "class_agnostic_masks"): {"segm": (29.7,)},
    ("2c", "roi_align"): {"segm": (30.3, 51.2, 31.5)},
    ("2c", "roi_align_max"): {"segm": (30.2, 51.0, 31.8)},
    ("2c", "roi_warp"): {"segm": (27.1,)},
    ("2c", "roi_warp_max"): {"segm": (27.2,)},
    ("2c", "roi_pool"): {"segm": (26.9, 48.8, 26.4)},
    ("2d", "roi_align"): {"segm": (30.9, 51.8, 32.1), "bbox": (34.0, 55.3, 36.4)},
    ("2d", "roi_pool"): {"segm": (23.6, 46.5, 21.6), "bbox": (28.2, 52.7, 26.9)},
    ("2e", "roi_align"): {"segm": (33.6,)},
    ("2e", "mlp_mask_head"): {"segm": (31.5,)},
}
METRICS = ("AP", "AP50", "AP75")


def run_key(variant, stride):
    return f"{variant}@{stride}"


def summarize(per_seed):
    """Mean and standard deviation (ddof 1; 0 for one seed) over seeds of every metric."""
    mean, std = {}, {}
    for t in ("bbox", "segm"):
        v = np.array([[r[t][k] for k in METRICS] for r in per_seed.values()])
        mean[t] = dict(zip(METRICS, v.mean(0).tolist()))
        std[t] = dict(zip(METRICS, (v.std(0, ddof=1) if len(v) > 1 else 0 * v[0]).tolist()))
    return mean, std


# the row label of a variant in a flat table (`--stride`)
LABELS = {"roi_align": "RoIAlign avg", "roi_align_max": "RoIAlign max", "roi_warp": "RoIWarp avg",
          "roi_warp_max": "RoIWarp max", "roi_pool": "RoIPool", "roi_align_unaligned": "aligned=False",
          "softmax_masks": "softmax masks", "class_agnostic_masks": "class-agnostic masks",
          "mlp_mask_head": "MLP mask head"}


def plan(variants, stride):
    """The table's rows for the chosen variants: the paper's sections, or one flat section at
    `stride` when it is given. Each row is (section, variant, stride, label)."""
    if stride is not None:
        return [("flat", v, stride, LABELS.get(v, v)) for v in variants]
    return [row for row in TABLE if row[1] in variants]


def _cell(run, t, k):
    """Mean +- std over the seeds; the one value when there is one seed."""
    cell = f"{100 * run['mean'][t][k]:.1f}"
    return cell + f" ± {100 * run['std'][t][k]:.1f}" if len(run["per_seed"]) > 1 else cell


def paper_numbers(section, variant, stride, t="segm"):
    """The paper's (AP, AP50, AP75) or (AP,) of a row, None where it has none. A row of the flat
    table (`--stride`) takes the numbers of the paper's row with the same variant and stride."""
    if section == "flat":
        section = next((sec for sec, v, st, _ in TABLE if v == variant and st == stride), None)
    return PAPER.get((section, variant), {}).get(t)


def _paper(section, variant, stride, t):
    p = paper_numbers(section, variant, stride, t)
    return " / ".join(f"{x:.1f}" for x in p) if p else "—"


def results_markdown(rows, runs, header):
    """The table, one block per section: mean +- std (over seeds) of box and mask AP / AP50 / AP75 beside the
    paper's numbers, and each row's difference from its section's first row (ours, the paper's)."""
    out = [header]
    for section in dict.fromkeys(r[0] for r in rows):
        sec = [r for r in rows if r[0] == section]
        base = runs[run_key(sec[0][1], sec[0][2])]["mean"]
        base_paper = paper_numbers(section, sec[0][1], sec[0][2])
        out += ["", f"### {SECTIONS.get(section, f'every variant at stride {sec[0][2]}')}", "",
                "| row | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 | "
                "Δ mask AP | paper mask AP / AP50 / AP75 | paper box AP / AP50 / AP75 | paper Δ mask AP |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, variant, stride, label in sec:
            r = runs[run_key(variant, stride)]
            m = r["mean"]
            paper = paper_numbers(section, variant, stride)
            d_paper = f"{paper[0] - base_paper[0]:+.1f}" if paper and base_paper else "—"
            out.append(f"| {label} | " + " | ".join(_cell(r, t, k) for t in ("bbox", "segm")
                                                      for k in METRICS)
                       + f" | {100 * (m['segm']['AP'] - base['segm']['AP']):+.1f} | "
                       f"{_paper(section, variant, stride, 'segm')} | {_paper(section, variant, stride, 'bbox')} | "
                       f"{d_paper} |")
    return "\n".join(out) + "\n"


def ablation_figure(rows, runs):
    """Bars of mask AP (mean, error bar = std over seeds) per section, with the paper's difference
    from the section's first row written beside ours. matplotlib.figure.Figure, no pyplot."""
    from matplotlib.figure import Figure

    sections = list(dict.fromkeys(r[0] for r in rows))
    widths = [max(3.2, 0.85 * sum(r[0] == s for r in rows)) for s in sections]  # room per bar label
    fig = Figure(figsize=(sum(widths) + 1, 4.6), layout="constrained")
    axes = fig.subplots(1, len(sections), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, section in zip(axes, sections):
        sec = [r for r in rows if r[0] == section]
        mean = [100 * runs[run_key(v, st)]["mean"]["segm"]["AP"] for _, v, st, _ in sec]
        std = [100 * runs[run_key(v, st)]["std"]["segm"]["AP"] for _, v, st, _ in sec]
        x = np.arange(len(sec))
        ax.bar(x, mean, yerr=std, capsize=4, color="tab:blue", alpha=0.8)
        base_paper = paper_numbers(section, sec[0][1], sec[0][2])
        for i, (_, v, st, _) in enumerate(sec):
            paper = paper_numbers(section, v, st)
            text = f"ours {mean[i] - mean[0]:+.1f}"
            if paper and base_paper:
                text += f"\npaper {paper[0] - base_paper[0]:+.1f}"
            if i == 0:
                text = "baseline"
            ax.text(i, mean[i] + std[i] + 1, text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [r[3] for r in sec], rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, max(m + s for m, s in zip(mean, std)) * 1.25 + 5)
        ax.set_title(section if section != "flat" else f"stride {sec[0][2]}", fontsize=10)
        n = len(runs[run_key(sec[0][1], sec[0][2])]["per_seed"])
        ax.set_ylabel((f"mask AP (mean ± std of {n} seeds)" if n > 1 else "mask AP (one seed)")
                      if ax is axes[0] else "")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Table 2 on shapes: Δ = difference from each panel's first bar", fontsize=10)
    return fig
