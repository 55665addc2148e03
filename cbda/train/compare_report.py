"""The results of `cbda compare`: compare.json, compare.md (paper Table 1 and Fig. 5 as tables)
and PNG plots (imbalance per round, per-class IoU gain over RA, labelled classes vs the goal).

Statistics are over seeds: mean and sample standard deviation (ddof 1; "-" with one seed). Gains
over RA are paired: each seed's run minus RA's run of the same seed and budget (they share the
trunk, so the pairing removes the seed's own luck from the difference).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .metrics_io import write_json

NOT_LEARNED_IOU = 1.0  # a class under 1 % IoU when fully supervised counts as not learnable here


def _mean_std(values) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def _goal(cfg: dict, C: int) -> list[float]:
    g = (cfg.get("active") or {}).get("goal")
    g = np.full(C, 1.0 / C) if g is None else np.asarray(g, np.float64)
    return (g / g.sum()).tolist()


def _run_row(rec: dict) -> dict:
    """A compare.json "runs" entry from a sweep record (seed, kind, ..., metrics)."""
    m = rec["metrics"] or {}
    final = m.get("final") or {}
    rounds = [{k: r.get(k) for k in ("round", "iteration", "class_histogram", "imbalance_score",
                                     "labelled_fraction", "num_picks")}
              for r in m.get("rounds") or []]
    return {"seed": rec["seed"], "kind": rec["kind"], "strategy": rec["strategy"],
            "budget": rec["budget"], "dir": rec["dir"], "finished": bool(final),
            "seconds": m.get("seconds"), "miou": final.get("miou"), "min_iou": final.get("min_iou"),
            "min_class": final.get("min_class"), "per_class_iou": final.get("per_class_iou"),
            "rounds": rounds}


def _share(hist: dict, classes) -> list[float]:
    total = sum(hist.values()) or 1
    return [hist.get(c, 0) / total for c in classes]


def build_summary(records: list[dict], cfg: dict, machine: dict, sweep: dict, trunks: dict,
                  seconds: float) -> dict:
    """The compare.json object: machine, sweep arguments, the config, per-run rows and the
    aggregates (per kind/strategy/budget: mean and std over seeds, paired gains over RA)."""
    runs = [_run_row(r) for r in records]
    done = [r for r in runs if r["finished"]]
    classes = list(next((r["per_class_iou"] for r in done if r["per_class_iou"]), {}) or [])
    pixels = next(((r["metrics"].get("final") or {}).get("class_pixels") for r in records
                   if r["metrics"] and (r["metrics"].get("final") or {}).get("class_pixels")), None)
    by_freq = sorted(classes, key=lambda c: -(pixels or {}).get(c, 0)) if pixels else classes
    ra = {(r["seed"], r["budget"]): r for r in done if r["kind"] == "adapt" and r["strategy"] == "ra"}

    groups: dict[tuple, list[dict]] = {}
    for r in done:
        groups.setdefault((r["kind"], r["strategy"], r["budget"]), []).append(r)
    rows = []
    for (kind, strategy, budget), rs in groups.items():
        row = {"kind": kind, "strategy": strategy, "budget": budget, "seeds": [r["seed"] for r in rs]}
        for key in ("miou", "min_iou"):
            row[key], row[key + "_std"] = _mean_std(r[key] for r in rs)
        row["per_class_iou"] = {c: _mean_std((r["per_class_iou"] or {}).get(c) for r in rs)[0] for c in classes}
        row["seconds"] = _mean_std(r["seconds"] for r in rs)[0]
        if kind == "adapt":
            n_rounds = max(len(r["rounds"]) for r in rs)
            per_round = [_mean_std(r["rounds"][k]["imbalance_score"] for r in rs if len(r["rounds"]) > k)
                         for k in range(n_rounds)]
            row["imbalance_per_round"] = [m for m, _ in per_round]
            row["imbalance_per_round_std"] = [s for _, s in per_round]
            row["imbalance"], row["imbalance_std"] = per_round[-1] if per_round else (None, None)
            shares = np.asarray([_share(r["rounds"][-1]["class_histogram"], classes) for r in rs if r["rounds"]])
            row["labelled_share"] = dict(zip(classes, shares.mean(0).tolist())) if shares.size else None
            paired = [(r, ra[(r["seed"], budget)]) for r in rs if (r["seed"], budget) in ra]
            if paired and strategy != "ra":
                for key in ("miou", "min_iou"):
                    row[key + "_gain"], row[key + "_gain_std"] = _mean_std(
                        (a[key] - b[key]) if a[key] is not None and b[key] is not None else None
                        for a, b in paired)
                row["per_class_gain"] = {
                    c: _mean_std(((a["per_class_iou"] or {}).get(c) - (b["per_class_iou"] or {}).get(c))
                                 if (a["per_class_iou"] or {}).get(c) is not None
                                 and (b["per_class_iou"] or {}).get(c) is not None else None
                                 for a, b in paired)[0] for c in classes}
        rows.append(row)
    order = {s: i for i, s in enumerate(sweep["strategies"])}
    rows.sort(key=lambda r: (r["kind"] != "source_only", r["kind"] != "supervised",
                             r["budget"] or 0, order.get(r["strategy"], 99)))

    sup = [r for r in done if r["kind"] == "supervised"]
    not_learned = {}
    for c in classes:
        # None: absent from the val split and never predicted, so not evidence either way
        low = [r["seed"] for r in sup if (r["per_class_iou"] or {}).get(c) is not None
               and r["per_class_iou"][c] < NOT_LEARNED_IOU]
        if low:
            not_learned[c] = low
    run_seconds = sum(r["seconds"] or 0 for r in done) + sum(t["seconds"] or 0 for t in trunks.values())
    return {"version": 1, "machine": machine, "seconds": seconds, "run_seconds": round(run_seconds, 1),
            "sweep": sweep, "config": cfg,
            "classes": classes, "classes_by_frequency": by_freq, "goal": _goal(cfg, len(classes) or 1),
            "trunks": trunks, "runs": runs, "summary": rows,
            "not_learned_when_supervised": not_learned,
            "unfinished": [r["dir"] for r in runs if not r["finished"]]}


# ---------------------------------------------------------------- markdown
def _pm(mean, std, digits=1, sign=False) -> str:
    if mean is None:
        return "-"
    s = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return s + (f" ± {std:.{digits}f}" if std is not None else "")


def _label(row: dict) -> str:
    return {"source_only": "source only", "supervised": "fully supervised"}.get(row["kind"], row["strategy"])


def render_markdown(s: dict) -> str:
    """compare.md: the setup line, Table-1-style table, per-class IoU, imbalance per round."""
    mc, sw = s["machine"], s["sweep"]
    cfg = s["config"]
    out = [f"# Strategy comparison ({sw['config']})", ""]
    out.append(f"Machine: {mc['cpu']}, {mc['cpus']} CPUs; torch {mc['torch']}, {sw['threads']} threads"
               + (f"; GPU {mc['gpu']}" if mc.get("gpu") else "") + f". Training time: {s['run_seconds']:.0f} s (sum over the finished runs and trunks"
               + (f"; load average {mc['loadavg']:.1f} at the end" if mc.get("loadavg") is not None else "")
               + ").")
    data, tr, act, model = cfg["data"], cfg["train"], cfg["active"], cfg["model"]
    gen = data.get("generate") or {}
    out.append(f"Setup: {model.get('backbone')} width {model.get('width')}, images "
               f"{data.get('target_size')}, {gen.get('num_source', '?')} source / "
               f"{gen.get('num_train', '?')} target train / {gen.get('num_val', '?')} val images; "
               f"{tr['iters']} iterations, {act['rounds']} rounds at {act['schedule']}, radius "
               f"{act.get('radius', 1)}, seeds {sw['seeds']}. mIoU and min IoU in %, mean ± std over seeds; "
               f"gains are paired with RA of the same seed and budget.")
    if s["unfinished"]:
        out += ["", f"**Unfinished runs** (resume with `--resume`): {', '.join(s['unfinished'])}"]
    out += ["", "## mIoU (Table 1 style)", "",
            "| budget | strategy | seeds | mIoU | gain over RA | min IoU | min IoU gain | imbalance | s / run |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["summary"]:
        budget = f"{100 * r['budget']:g} %" if r["budget"] else "-"
        out.append(f"| {budget} | {_label(r)} | {len(r['seeds'])} | {_pm(r['miou'], r['miou_std'])} | "
                   f"{_pm(r.get('miou_gain'), r.get('miou_gain_std'), sign=True)} | "
                   f"{_pm(r['min_iou'], r['min_iou_std'])} | "
                   f"{_pm(r.get('min_iou_gain'), r.get('min_iou_gain_std'), sign=True)} | "
                   f"{_pm(r.get('imbalance'), r.get('imbalance_std'), 3)} | "
                   f"{_pm(r['seconds'], None, 0)} |")
    names = s["classes_by_frequency"]
    out += ["", "## IoU per class (mean over seeds; classes by frequency in the val split)", "",
            "| budget | strategy | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for r in s["summary"]:
        budget = f"{100 * r['budget']:g} %" if r["budget"] else "-"
        out.append(f"| {budget} | {_label(r)} | "
                   + " | ".join(_pm(r["per_class_iou"].get(n), None) for n in names) + " |")
    adapt = [r for r in s["summary"] if r["kind"] == "adapt"]
    if adapt:
        R = max(len(r["imbalance_per_round"]) for r in adapt)
        out += ["", "## Imbalance score of the labelled set after each round (Fig. 5 style)", "",
                "KL(labelled-class histogram || goal) / ln C for the uniform goal (Eq. 4): 0 is perfectly "
                "balanced.", "",
                "| budget | strategy | " + " | ".join(f"round {k}" for k in range(1, R + 1)) + " |",
                "|---|---|" + "---:|" * R]
        for r in adapt:
            cells = [_pm(m, sd, 3) for m, sd in zip(r["imbalance_per_round"], r["imbalance_per_round_std"])]
            out.append(f"| {100 * r['budget']:g} % | {r['strategy']} | " + " | ".join(cells) + " |")
    if s["trunks"]:
        out += ["", "Shared training up to round 1 (one per seed): " + "; ".join(
            f"seed {k}: {v['iteration']} iterations, mIoU {v['miou']:.1f}, {v['seconds']:.0f} s"
            for k, v in s["trunks"].items()) + "."]
    nl = s["not_learned_when_supervised"]
    if any(r["kind"] == "supervised" for r in s["summary"]):
        out += ["", ("Classes under 1 % IoU even when fully supervised (seeds): "
                     + ", ".join(f"{c} ({', '.join(map(str, v))})" for c, v in nl.items())) if nl
                else "Every class reaches at least 1 % IoU when fully supervised, in every seed."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _by_budget(s: dict) -> dict[float, list[dict]]:
    out: dict[float, list[dict]] = {}
    for r in s["summary"]:
        if r["kind"] == "adapt":
            out.setdefault(r["budget"], []).append(r)
    return out


def plot_imbalance(s: dict, path: Path) -> None:
    """Imbalance score after each round, one line per strategy (mean ± std over seeds), one
    panel per budget; integer round ticks."""
    plt = _plt()
    groups = _by_budget(s)
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False, sharey=True)
    for ax, (budget, rows) in zip(axes[0], sorted(groups.items())):
        for r in rows:
            ks = list(range(1, len(r["imbalance_per_round"]) + 1))
            err = [e or 0.0 for e in r["imbalance_per_round_std"]]
            ax.errorbar(ks, r["imbalance_per_round"], yerr=err, marker="o", capsize=3, label=r["strategy"])
            ax.set_xticks(ks)
        ax.set_title(f"budget {100 * budget:g} %")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("imbalance score")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_iou_gain(s: dict, path: Path) -> None:
    """Per-class IoU gain over RA (mean over seeds), grouped bars per strategy, a panel per budget."""
    plt = _plt()
    groups = {b: [r for r in rows if r.get("per_class_gain")] for b, rows in _by_budget(s).items()}
    groups = {b: rows for b, rows in groups.items() if rows}
    if not groups:
        return
    names = s["classes_by_frequency"]
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(7, 0.55 * len(names)), 3.2 * len(groups)),
                             squeeze=False, sharex=True)
    for ax, (budget, rows) in zip(axes[:, 0], sorted(groups.items())):
        width = 0.8 / len(rows)
        for j, r in enumerate(rows):
            gain = [r["per_class_gain"].get(n) or 0.0 for n in names]
            ax.bar([i - 0.4 + (j + 0.5) * width for i in range(len(names))], gain, width, label=r["strategy"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("IoU gain over RA (points)")
        ax.set_title(f"budget {100 * budget:g} %")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=60, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_class_distribution(s: dict, path: Path) -> None:
    """Share of labelled pixels per class after the last round (mean over seeds) per strategy,
    against the goal distribution, a panel per budget."""
    plt = _plt()
    groups = _by_budget(s)
    if not groups:
        return
    names = s["classes_by_frequency"]
    goal = dict(zip(s["classes"], s["goal"]))
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(7, 0.55 * len(names)), 3.2 * len(groups)),
                             squeeze=False, sharex=True)
    for ax, (budget, rows) in zip(axes[:, 0], sorted(groups.items())):
        rows = [r for r in rows if r.get("labelled_share")]
        width = 0.8 / max(1, len(rows))
        for j, r in enumerate(rows):
            ax.bar([i - 0.4 + (j + 0.5) * width for i in range(len(names))],
                   [r["labelled_share"][n] for n in names], width, label=r["strategy"])
        ax.step([i - 0.5 for i in range(len(names) + 1)], [goal[n] for n in names] + [goal[names[-1]]],
                where="post", color="black", lw=1.2, label="goal")
        ax.set_yscale("log")
        ax.set_ylabel("share of labelled pixels")
        ax.set_title(f"budget {100 * budget:g} %, after the last round")
        ax.legend(fontsize=8, ncol=2)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=60, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(s: dict, out_dir: str | Path) -> None:
    """compare.json, compare.md, imbalance.png, iou_gain.png, class_distribution.png in out_dir."""
    out = Path(out_dir)
    write_json(out / "compare.json", s)
    (out / "compare.md").write_text(render_markdown(s))
    plot_imbalance(s, out / "imbalance.png")
    plot_iou_gain(s, out / "iou_gain.png")
    plot_class_distribution(s, out / "class_distribution.png")
