from cbda.train.metrics_io import write_json
from cbda.train.report import classes_by_frequency, format_results, report


def _metrics(name, ious, imbalance):
    classes = ["road", "pole", "sky"]
    return {"name": name, "mode": "adapt", "strategy": name, "budget": 0.05, "classes": classes,
            "rounds": [{"round": k, "iteration": 10 * k, "labelled_fraction": 0.01 * k,
                        "imbalance_score": s, "class_histogram": {"road": 50, "pole": 5 * k, "sky": 10}}
                       for k, s in enumerate(imbalance, 1)],
            "final": {"miou": sum(ious) / 3, "per_class_iou": dict(zip(classes, ious)), "min_iou": min(ious),
                      "min_class": classes[ious.index(min(ious))], "iteration": 30,
                      "class_pixels": {"road": 100, "pole": 3, "sky": 40}}}


def test_results_table_sorted_by_frequency():
    m = _metrics("cbda", [90.0, 20.0, float("nan")], [0.3, 0.2])
    assert classes_by_frequency(m) == ["road", "sky", "pole"]
    text = format_results(m)
    lines = text.splitlines()
    assert lines.index(next(l for l in lines if l.startswith("road"))) < lines.index(
        next(l for l in lines if l.startswith("pole")))
    assert "min IoU" in text and "(pole)" in text and "0.200" in text


def test_report_across_runs(tmp_path):
    for name, ious, imb in (("ra", [90.0, 10.0, 80.0], [0.4, 0.5]), ("cbda", [91.0, 25.0, 79.0], [0.1, 0.05])):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "metrics.json", _metrics(name, ious, imb))
    text = report([tmp_path / "ra", tmp_path / "cbda"], tmp_path / "out", baseline="ra")
    header = text.splitlines()[0]
    assert header.index("road") < header.index("sky") < header.index("pole")
    assert "| cbda | 91.0 | 79.0 | 25.0 | 65.0 | 25.0 | 0.050 |" in text
    for f in ("report.md", "iou_gain_cbda.png", "imbalance.png", "histograms.png"):
        assert (tmp_path / "out" / f).is_file()


def test_imbalance_plot_has_whole_round_ticks():
    from cbda.train.report import imbalance_figure
    runs = [("ra", _metrics("ra", [1.0, 2.0, 3.0], [0.4, 0.5])), ("cbda", _metrics("cbda", [1.0, 2.0, 3.0], [0.1, 0.05]))]
    fig, ax = imbalance_figure(runs)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_results_table_rounds_every_float():
    import re
    m = _metrics("cbda", [90.123456789, 20.0, 33.333333333], [0.31234567891234567, 0.2])
    m["final"]["iteration"] = 30
    text = format_results(m)
    assert not re.search(r"\d\.\d{4,}", text), text
    assert "0.312" in text and "90.1" in text
