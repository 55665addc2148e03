"""Result tables and plots from runs' metrics.json files.

`format_results` is the table printed at the end of a run; `report` renders, across runs, a
table like the CBDA paper's Table 1 (per-class IoU with classes sorted by frequency, mIoU,
minimum class IoU, imbalance score) and PNG plots: per-class IoU gain of one run over another,
imbalance score per round, labelled-class histograms.
"""
from __future__ import annotations

from pathlib import Path

from .errors import RunError
from .metrics_io import read_metrics


def _fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def classes_by_frequency(metrics: dict) -> list[str]:
    """Class names, most frequent first (ground-truth pixels of the evaluation split), falling back
    to the class order when no counts are recorded."""
    pixels = (metrics.get("final") or {}).get("class_pixels") or {}
    names = list(metrics.get("classes") or pixels)
    return sorted(names, key=lambda n: -pixels.get(n, 0)) if pixels else names


def format_results(metrics: dict) -> str:
    """The end-of-run table: per-class IoU (by frequency), mIoU, min IoU; then one row per
    acquisition round with the labelled share, the imbalance score and mIoU before the round."""
    lines = []
    final = metrics.get("final") or {}
    title = f"Results of {metrics.get('name') or 'run'}"
    if metrics.get("mode") == "adapt":
        title += f" (strategy {metrics.get('strategy')}, budget {metrics.get('budget')})"
    lines += [title, ""]
    if final:
        names = classes_by_frequency(metrics)
        per = final.get("per_class_iou", {})
        w = max(len(n) for n in names)
        lines.append(f"{'class':<{w}}  IoU %")
        for n in names:
            lines.append(f"{n:<{w}}  {_fmt(per.get(n)):>5}")
        lines.append(f"{'mIoU':<{w}}  {_fmt(final.get('miou')):>5}")
        lines.append(f"{'min IoU':<{w}}  {_fmt(final.get('min_iou')):>5}  ({final.get('min_class')})")
        lines.append("")
    rounds = metrics.get("rounds") or []
    if rounds:
        lines.append("round  iteration  labelled %  imbalance  mIoU before")
        for r in rounds:
            frac = r.get("labelled_fraction")
            lines.append(f"{r['round']:>5}  {r['iteration']:>9}  {_fmt(None if frac is None else 100 * frac, 2):>10}"
                         f"  {_fmt(r.get('imbalance_score'), 3):>9}  {_fmt(r.get('miou_before')):>11}")
        lines.append(f"{'final':>5}  {final.get('iteration', ''):>9}  {'':>10}  {'':>9}  {_fmt(final.get('miou')):>11}")
    return "\n".join(lines)


def _label(run: Path, metrics: dict) -> str:
    # the work dir's name: users name runs by their folders, and config names can repeat
    p = Path(run).resolve()
    return (p.parent.name if p.is_file() else p.name) or (metrics.get("name") or "run")


def table(runs: list[tuple[str, dict]]) -> str:
    """Markdown table across runs: one row per run, IoU per class sorted by frequency (of the
    first run), then mIoU, min IoU and the imbalance score of the last round."""
    if not runs:
        return ""
    names = classes_by_frequency(runs[0][1])
    head = ["run"] + names + ["mIoU", "min IoU", "imbalance"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in runs:
        final = m.get("final") or {}
        per = final.get("per_class_iou", {})
        rounds = m.get("rounds") or []
        imb = rounds[-1].get("imbalance_score") if rounds else None
        cells = [label] + [_fmt(per.get(n)) for n in names] + [
            _fmt(final.get("miou")), _fmt(final.get("min_iou")), _fmt(imb, 3)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_iou_gain(base: tuple[str, dict], other: tuple[str, dict], path: str | Path) -> None:
    """Bar chart of per-class IoU of `other` minus `base` (classes by frequency)."""
    plt = _plt()
    names = classes_by_frequency(base[1])
    pb, po = base[1]["final"]["per_class_iou"], other[1]["final"]["per_class_iou"]
    gain = [(po.get(n) or 0.0) - (pb.get(n) or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.5))
    ax.bar(range(len(names)), gain, color=["tab:green" if g >= 0 else "tab:red" for g in gain])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_ylabel("IoU gain (points)")
    ax.set_title(f"{other[0]} over {base[0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def imbalance_figure(runs: list[tuple[str, dict]]):
    """(figure, axes) of the imbalance score of the labelled set after each round, one line per
    run; the round axis has whole-number ticks only."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, m in runs:
        rs = [r for r in m.get("rounds") or [] if r.get("imbalance_score") is not None]
        if rs:
            ax.plot([r["round"] for r in rs], [r["imbalance_score"] for r in rs], marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("imbalance score (KL to uniform / ln C)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, ax


def plot_imbalance(runs: list[tuple[str, dict]], path: str | Path) -> None:
    """Imbalance score of the labelled set after each round, one line per run, as a PNG."""
    fig, _ = imbalance_figure(runs)
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def plot_histograms(runs: list[tuple[str, dict]], path: str | Path) -> None:
    """Labelled pixels per class after the last round (share of the labelled set), grouped bars."""
    plt = _plt()
    runs = [(l, m) for l, m in runs if m.get("rounds")]
    if not runs:
        return
    names = classes_by_frequency(runs[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.5))
    width = 0.8 / len(runs)
    for j, (label, m) in enumerate(runs):
        hist = m["rounds"][-1]["class_histogram"]
        total = sum(hist.values()) or 1
        ax.bar([i + j * width for i in range(len(names))], [hist.get(n, 0) / total for n in names],
               width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=60, ha="right")
    ax.set_ylabel("share of labelled pixels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(run_dirs: list[str | Path], out_dir: str | Path | None = None, baseline: str | None = None,
           plots: bool = True) -> str:
    """Table across runs (printed form returned, also written to out_dir/report.md) and plots in
    out_dir: iou_gain_<run>.png for every run against the baseline (default: the first run),
    imbalance.png, histograms.png."""
    runs = [(_label(Path(d), m), m) for d in run_dirs for m in [read_metrics(d)]]
    labels = [l for l, _ in runs]
    if baseline is not None and baseline not in labels:
        raise RunError(f"--baseline: {baseline!r} is not one of the runs ({', '.join(labels)})")
    text = table(runs)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text + "\n")
        if plots:
            base = runs[labels.index(baseline)] if baseline is not None else runs[0]
            for run in runs:
                if run is not base and run[1].get("final") and base[1].get("final"):
                    plot_iou_gain(base, run, out / f"iou_gain_{run[0]}.png")
            plot_imbalance(runs, out / "imbalance.png")
            plot_histograms(runs, out / "histograms.png")
    return text
