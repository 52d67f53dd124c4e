"""Evaluation reports: a Markdown page, JSON metrics and plots in one folder."""

from __future__ import annotations

import json
from pathlib import Path

from metavox.pipeline.evaluate import EvalReport
from metavox.storage import atomic_write


def results_table(report: EvalReport) -> str:
    """A Markdown table: one row per method, one column per number of shots."""
    shots = sorted({s.shots for s in report.scores})
    methods = list(dict.fromkeys(s.method for s in report.scores))
    cell = {(s.method, s.shots): s for s in report.scores}
    head = "| method | " + " | ".join(f"{report.ways}-way {k}-shot" for k in shots) + " |"
    sep = "|---|" + "---|" * len(shots)
    rows = [head, sep]
    for m in methods:
        vals = []
        for k in shots:
            s = cell.get((m, k))
            vals.append(f"{100 * s.accuracy:.1f} ± {100 * s.ci95:.1f}" if s else "–")
        rows.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


def open_set_table(report: EvalReport) -> str:
    """A Markdown table of the clip-level open set: detection of the right word at each
    false-accept rate per non-target clip, and the EER, per method and shots."""
    if not report.open_set:
        return ""
    fars = list(report.open_set[0].detection)
    head = ("| method | shots | " + " | ".join(f"detection at {f} FA" for f in fars)
            + " | EER |")
    rows = [head, "|---|---|" + "---|" * (len(fars) + 1)]
    for o in report.open_set:
        cells = [f"{100 * m:.1f} ± {100 * c:.1f}" for m, c in (o.detection[f] for f in fars)]
        rows.append(f"| {o.method} | {o.shots} | " + " | ".join(cells)
                    + f" | {100 * o.eer[0]:.1f} ± {100 * o.eer[1]:.1f} |")
    return "\n".join(rows)


def plot_det(report: EvalReport, folder: Path) -> list[Path]:
    """The open set's DET curves (miss rate against false accepts per non-target clip,
    both logarithmic), one plot per number of shots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for k in sorted({o.shots for o in report.open_set}):
        fig, ax = plt.subplots(figsize=(5, 3.8))
        for o in (o for o in report.open_set if o.shots == k):
            far, miss = o.det["far"], o.det["miss"]
            ax.plot([100 * f for f in far], [100 * max(m, 1e-4) for m in miss],
                    label=f"{o.method} (EER {100 * o.eer[0]:.1f}%)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false accepts per non-target clip (%)")
        ax.set_ylabel("miss rate (%; a misnamed word is a miss)")
        ax.set_title(f"open set, {report.ways}-way {k}-shot")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"open_set_det_{k}shot.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _save(fig, ax, xlabel: str, title: str, path: Path) -> Path:
    """Label an accuracy plot, write it as PNG and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("query accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_report(report: EvalReport, folder: Path) -> list[Path]:
    """Accuracy against inner steps and against shots, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    curves = [s for s in report.scores if s.by_step]
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for s in curves:
            steps = sorted(s.by_step)
            m = [100 * s.by_step[t][0] for t in steps]
            c = [100 * s.by_step[t][1] for t in steps]
            ax.errorbar(steps, m, yerr=c, marker="o", capsize=2,
                        label=f"{s.method}, {s.shots}-shot")
        paths.append(_save(fig, ax, "inner steps at test time",
                           f"{report.ways}-way accuracy against adaptation steps",
                           folder / "accuracy_vs_steps.png"))
    shots = sorted({s.shots for s in report.scores})
    if len(shots) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m in dict.fromkeys(s.method for s in report.scores):
            pts = sorted((s.shots, s.accuracy, s.ci95) for s in report.scores if s.method == m)
            ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts],
                        yerr=[100 * p[2] for p in pts], marker="o", capsize=2, label=m)
        ax.set_xticks(shots)
        paths.append(_save(fig, ax, "shots (examples per class)",
                           f"{report.ways}-way accuracy against shots",
                           folder / "accuracy_vs_shots.png"))
    return paths


def write_report(report: EvalReport, folder: str | Path, *, title: str = "metavox evaluation",
                 notes: str = "") -> Path:
    """Write ``report.md``, ``metrics.json`` and the plots into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "metrics.json", json.dumps(report.to_dict(), indent=2) + "\n")
    plots = plot_report(report, folder)
    lines = [
        f"# {title}", "",
        f"Checkpoint `{report.checkpoint}`, meta-test data {report.data}: "
        f"{len(report.labels)} classes ({', '.join(report.labels)}).",
        f"{report.ways}-way, {report.queries} queries per class, {report.episodes} episodes "
        f"per cell, seed {report.seed}. Accuracy in % as mean ± 95% interval "
        "(1.96·σ/√n over episodes); every method saw the same episodes.", "",
        results_table(report), "",
    ]
    if report.adaptation:
        lines += [report.adaptation_line(), ""]
    if report.open_set:
        pool = report.open_set_pool
        lines += [
            "## Open set (clip level)", "",
            "Per episode the enrolled words' other clips are targets, every clip of a word "
            "not enrolled and every background is a non-target; one threshold over all "
            f"episodes' non-target scores (rule: {pool.get('rule', 'logit')}). Detection "
            "of the right word in % at a false-accept rate per non-target clip, and the "
            "equal error rate, with 95% intervals from a bootstrap over episodes and clips. "
            f"Pool: {pool.get('clips', 0)} clips: the test words, "
            f"{len(pool.get('other words', []))} other words "
            f"({', '.join(pool.get('other words', [])) or 'none'}), "
            f"{pool.get('backgrounds', 0)} backgrounds.", "",
            open_set_table(report), "",
        ]
        plots = [*plots, *plot_det(report, folder)]
    if notes:
        lines += [notes, ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    atomic_write(folder / "report.md", "\n".join(lines))
    return folder / "report.md"
