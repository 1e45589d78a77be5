"""The run's report: ``report.html`` (one self-contained file) and ``pareto.png``.

Built from the ranking and the run's records only (matplotlib, no torch). Figures:
accuracy vs global sparsity of every candidate and its matched global baselines (the
paper's comparison), accuracy vs p50 latency and vs compact size per device, and the
per-layer sparsity of the chosen candidate. ``pareto.png`` holds all panels in one image;
the HTML embeds them one by one as PNG data.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from mixprune.candidates import FP32, MIXMATCH, STRUCTURED, UNSTRUCTURED, Axes, CandidateId, describe
from mixprune.devices.fields import MB
from mixprune.errors import RunDirError
from mixprune.runs import RunDir, atomic_write_bytes

# A series' marker and color come with its records (strategy.json ``style``, carried by the ranking rows): each
# signal, baseline and INT8 recipe brings its own where it is registered; a record without one is drawn so
NEUTRAL_STYLE = {"marker": "o", "color": "#444444"}
CHOSEN = dict(s=260, facecolors="none", edgecolors="#d62728", linewidths=2.2, zorder=5)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(row: dict) -> tuple[str, str, str]:
    """(label, marker, color) of a candidate's series on the plots: one per signal, baseline method and
    INT8 format (whatever their parent), the structured family's named so; drawn with the row's ``style``
    (the structured family's series have markers of their own), else NEUTRAL_STYLE."""
    family = "structured " if row["family"] == STRUCTURED else ""
    style = {**NEUTRAL_STYLE, **(row.get("style") or {})}
    if row["format"] != FP32:
        label = f"{family}INT8, {row['activation']} activations"
    elif row["method"] == MIXMATCH:
        label = f"{family}Mix-and-Match {row['signal']}"
    else:
        label = f"{family}{'global ' if row['strategy'] == 'global' else ''}{row['signal'].upper()} baseline"
    return label, style["marker"], style["color"]


def _scatter_groups(ax, rows, x, y):
    """One series per signal / baseline method / INT8 format; ineligible candidates faded."""
    groups = {}
    for r in rows:
        if x(r) is not None and y(r) is not None:
            groups.setdefault(_series(r), []).append(r)
    for (label, marker, color), members in sorted(groups.items()):
        for eligible in (True, False):
            part = [r for r in members if r["eligible"] == eligible]
            if part:
                ax.scatter([x(r) for r in part], [y(r) for r in part], marker=marker, color=color,
                           alpha=0.9 if eligible else 0.3, label=label + ("" if eligible else " (excluded)"))


def _finish(ax, ranking, rows, x, y, xlabel, title):
    chosen = next((r for r in rows if r["cid"] == ranking["chosen"]), None)
    if chosen is not None and x(chosen) is not None:
        ax.scatter([x(chosen)], [y(chosen)], label=f"chosen: {chosen['cid']}", **CHOSEN)
    dense = ranking["dense"]["accuracy"] * 100
    ax.axhline(dense, color="black", lw=0.8, ls="--", label=f"dense {dense:.1f}%")
    ax.axhline(dense - ranking["max_drop"], color="grey", lw=0.8, ls=":",
               label=f"max drop {ranking['max_drop']:g} pt (applied on the tune split)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    accs = [r["accuracy"] * 100 for r in rows if x(r) is not None]
    floor = dense - max(5.0, 4 * ranking["max_drop"])  # far below the constraint: collapsed, out of view
    ax.set_ylim(max(min(accs + [floor]), floor) - 1, max(accs + [dense]) + 3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_sparsity(ax, ranking):
    rows = [r for r in ranking["candidates"] if r["kernels"] == "fp32"]
    _scatter_groups(ax, rows, lambda r: r["global_sparsity"] * 100, lambda r: r["accuracy"] * 100)
    _finish(ax, ranking, rows, lambda r: r["global_sparsity"] * 100, lambda r: r["accuracy"] * 100,
            "prunable weights zeroed or cut away (%)", "Accuracy vs sparsity: Mix-and-Match and matched baselines, "
            "unstructured and structured\n(below the view: collapsed candidates)")


def plot_device(ax, ranking, device, metric):
    rows = ranking["candidates"]
    if metric == "latency":
        x = lambda r: r["devices"][device].get("p50_ms")  # noqa: E731
        xlabel, what = f"p50 latency on {device} (ms)", "latency"
    else:
        x = lambda r: r["bytes"]["compact"] / MB if r["bytes"] else None  # noqa: E731
        xlabel, what = "compact size (MB, lossless)", "size"
    y = lambda r: r["accuracy"] * 100  # noqa: E731
    _scatter_groups(ax, rows, x, y)
    front = [r for r in rows if device in r["pareto"] and x(r) is not None]
    if front:
        ax.scatter([x(r) for r in front], [y(r) for r in front], s=90, facecolors="none", edgecolors="black",
                   linewidths=1, label="Pareto front", zorder=4)
    info = next(d for d in ranking["devices"] if d["name"] == device)
    caveat = " (EMULATED)" if info["emulated"] else (
        "\n(same kernels for every candidate: the spread is noise)" if info["same_speed"] and metric == "latency" else "")
    _finish(ax, ranking, rows, x, y, xlabel, f"Accuracy vs {what} on {device}, fp32 and INT8{caveat}")


def plot_layers(ax, ranking, strategies: dict):
    chosen = ranking["chosen"]
    if chosen is None:
        ax.text(0.5, 0.5, "no candidate chosen", ha="center", va="center")
        ax.set_axis_off()
        return
    layers = strategies[chosen]["layers"]
    structured = Axes.of(strategies[chosen]).family == STRUCTURED
    names = list(layers)
    ax.bar(range(len(names)), [layers[n] * 100 for n in names], color="#1f77b4", label=chosen)
    base = next((b for b in strategies[chosen].get("baselines", [])
                 if CandidateId.parse(b).signal == "mag" and b in strategies), None)
    if base:
        ax.plot(range(len(names)), [strategies[base]["layers"].get(n, 0) * 100 for n in names], "k.", ms=5,
                label=f"{base} (global magnitude, same {'MACs' if structured else 'sparsity'})")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
    what = "output channels cut" if structured else "sparsity"
    ax.set_ylabel(f"{what} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-layer {what} of {chosen}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def figures(ranking: dict, strategies: dict) -> dict[str, bytes]:
    """Each panel as its own PNG (for the HTML) and all of them in one (pareto.png)."""
    plt = _plt()
    devices = [d["name"] for d in ranking["devices"]]
    panels = [("sparsity", lambda ax: plot_sparsity(ax, ranking))]
    for d in devices:
        panels.append((f"latency-{d}", lambda ax, d=d: plot_device(ax, ranking, d, "latency")))
        panels.append((f"size-{d}", lambda ax, d=d: plot_device(ax, ranking, d, "size")))
    panels.append(("layers", lambda ax: plot_layers(ax, ranking, strategies)))
    out = {}
    for name, draw in panels:
        fig, ax = plt.subplots(figsize=(7.5, 4.6) if name != "layers" else (9, 3.4))
        draw(ax)
        out[name] = _png(fig)
    rows = 1 + len(devices) + 1
    fig = plt.figure(figsize=(15, 5 * rows))
    grid = fig.add_gridspec(rows, 2)
    plot_sparsity(fig.add_subplot(grid[0, :]), ranking)
    for i, d in enumerate(devices, start=1):
        plot_device(fig.add_subplot(grid[i, 0]), ranking, d, "latency")
        plot_device(fig.add_subplot(grid[i, 1]), ranking, d, "size")
    plot_layers(fig.add_subplot(grid[rows - 1, :]), ranking, strategies)
    fig.tight_layout()
    out["pareto"] = _png(fig)
    return out


# --- HTML -----------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.box{border:2px solid #d62728;border-radius:6px;padding:.8em 1.2em;background:#fff8f8}
.note{border-left:4px solid #f0ad4e;background:#fffaf0;padding:.6em 1em;margin:1em 0}
table{border-collapse:collapse;font-size:.82em;width:100%} th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:right}
th{background:#f5f5f5;position:sticky;top:0} td.l,th.l{text-align:left}
tr.chosen{background:#ffecec;font-weight:bold} tr.no{color:#999}
img{max-width:100%} .pair img{width:49.5%} code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
.kv td{text-align:left;border:none;padding:2px 10px 2px 0}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _mb(n) -> str:
    return f"{n / MB:.3f}" if n is not None else "-"


def _candidate_table(ranking: dict) -> str:
    devices = [d["name"] for d in ranking["devices"]]
    head = ("<tr><th>rank</th><th class=l>candidate</th><th class=l>method</th><th class=l>family</th><th class=l>format</th><th>sparsity %</th>"
            "<th>held-out accuracy %</th><th>held-out drop pt</th><th>tune accuracy %</th><th>tune drop pt</th>"
            "<th>compact MB</th><th>model.onnx MB</th>"
            + "".join(f"<th>{_e(d)} p50 ms</th><th>{_e(d)} RSS MB</th>" for d in devices)
            + "<th class=l>eligible / reason</th></tr>")
    body = []
    for r in ranking["candidates"]:
        cls = "chosen" if r["cid"] == ranking["chosen"] else ("" if r["eligible"] else "no")
        cells = [r["rank"] or "", f'<td class=l>{_e(r["cid"])}</td>', _e(r["method"]), _e(r["family"]), _e(r["format"]),
                 f"{r['global_sparsity'] * 100:.1f}", f"{r['accuracy'] * 100:.2f}", f"{r['drop_points']:.2f}",
                 f"{r['tune_accuracy'] * 100:.2f}", f"{r['tune_drop_points']:.2f}",
                 _mb((r["bytes"] or {}).get("compact")), _mb((r["bytes"] or {}).get("model_onnx"))]
        for d in devices:
            m = r["devices"][d]
            cells += [f"{m['p50_ms']:.3f}" if m["benched"] else "-", f"{m['peak_rss_mb']:.1f}" if m["benched"] else "-"]
        verdict = ("yes" + (" (Pareto: " + ", ".join(r["pareto"]) + ")" if r["pareto"] else "")) if r["eligible"] \
            else _e(r["reason"])
        cells.append(f"<td class=l>{verdict}</td>")
        body.append(f'<tr class="{cls}">' + "".join(c if str(c).startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _baseline_table(ranking: dict) -> str:
    """Each Mix-and-Match candidate against the best baseline matched to it (the same sparsity, or for
    structured ones the same MACs), both before fine-tuning."""
    by_id = {r["cid"]: r for r in ranking["candidates"]}
    rows, score = [], {}
    mixmatch = (r for r in ranking["candidates"] if r["method"] == MIXMATCH and r["format"] == FP32)
    for r in sorted(mixmatch, key=lambda r: (r["family"] != UNSTRUCTURED, -r["accuracy_pruned"], r["cid"])):
        bases = [by_id[b] for b in r["baselines"] if b in by_id]
        if not bases:
            continue
        best = max(bases, key=lambda b: (b["tune_accuracy_pruned"], b["cid"]))  # picked on tune, shown held-out
        delta = (r["accuracy_pruned"] - best["accuracy_pruned"]) * 100
        wins, total = score.get(r["family"], (0, 0))
        score[r["family"]] = (wins + (delta >= 0), total + 1)
        rows.append(f"<tr><td class=l>{_e(r['cid'])}</td><td class=l>{_e(r['family'])}</td>"
                    f"<td>{r['global_sparsity'] * 100:.1f}</td>"
                    f"<td>{r['accuracy_pruned'] * 100:.2f}</td><td class=l>{_e(best['cid'])}</td>"
                    f"<td>{best['accuracy_pruned'] * 100:.2f}</td><td>{delta:+.2f}</td></tr>")
    if not rows:
        return "<p>No matched baselines in this run.</p>"
    counts = "; ".join(f"{mode}: <b>{wins} of {total}</b>" for mode, (wins, total) in score.items())
    return (f"<p>Mix-and-Match matches or beats the best baseline matched to it (the same sparsity; structured: "
            f"the same MACs) in {counts} cases, both measured before fine-tuning (pruned, normalization "
            "re-estimated), so that fine-tuning only some of them does not tilt the comparison; the figure above "
            "and the ranking use the fine-tuned accuracy where there is one.</p><table><tr><th class=l>candidate</th>"
            "<th class=l>family</th><th>weights zeroed or cut %</th><th>held-out accuracy %</th>"
            "<th class=l>best matched baseline (on tune)</th><th>its held-out accuracy %</th>"
            f"<th>difference pt</th></tr>{''.join(rows)}</table>")


def render_html(ranking: dict, run: dict, root: Path, pngs: dict[str, bytes], described: str | None) -> str:
    """``run``: the run record (run.json); ``root``: the run directory; ``described``: what the chosen
    model is, in words (mixprune.candidates.describe)."""
    model = run.get("model", {})
    data = run.get("data", {})
    chosen = next((r for r in ranking["candidates"] if r["cid"] == ranking["chosen"]), None)
    ranking_path = RunDir(root).ranking_json
    if chosen:
        dev_rows = "".join(
            f"<tr><td>{_e(d)}</td><td>p50 {m['p50_ms']:.3f} ms, p90 {m['p90_ms']:.3f} ms, peak RSS {m['peak_rss_mb']:.1f} MB"
            f"{' (EMULATED)' if m['emulated'] else ''}</td></tr>" for d, m in chosen["devices"].items() if m["benched"])
        box = (f"<div class=box><h2 style='border:none;margin-top:0'>Chosen: <code>{_e(chosen['cid'])}</code></h2>"
               f"<p>{_e(ranking['chosen_why'])}</p><table class=kv>"
               f"<tr><td>held-out accuracy</td><td>{chosen['accuracy'] * 100:.2f}% ({_e(chosen['accuracy_source'])}, "
               f"{ranking['samples']} images); dense {ranking['dense']['accuracy'] * 100:.2f}%</td></tr>"
               f"<tr><td>tune accuracy (chosen on)</td><td>{chosen['tune_accuracy'] * 100:.2f}% "
               f"({ranking['tune_samples']} images); dense {ranking['dense']['tune_accuracy'] * 100:.2f}%</td></tr>"
               f"<tr><td>what it is</td><td>{_e(described)}</td></tr>"
               f"<tr><td>size</td><td>model.onnx {_mb(chosen['bytes']['model_onnx'])} MB ({_e(chosen['storage'])} storage), "
               f"compact {_mb(chosen['bytes']['compact'])} MB, dense ONNX {_mb(chosen['bytes']['onnx'])} MB</td></tr>"
               f"{dev_rows}</table><p>Ship it: <code>mixprune release {_e(root)}</code></p></div>")
    else:
        box = f"<div class=box><h2 style='border:none;margin-top:0'>No candidate chosen</h2><p>{_e(ranking['chosen_why'])}</p></div>"
    notes = "".join(f"<div class=note>{_e(d['speed_note'])}</div>" for d in ranking["devices"])
    versus = "".join(f"<li>{_e(d['chosen_vs_dense'])}</li>" for d in ranking["devices"] if d.get("chosen_vs_dense"))
    if versus:
        notes = f"<p>The chosen candidate against the dense model:</p><ul>{versus}</ul>{notes}"
    device_figs = "".join(
        f"<h3>{_e(d['name'])}{' (emulated)' if d['emulated'] else ''}</h3>"
        f"<div class=pair>{_img(pngs['latency-' + d['name']], 'accuracy vs latency')}"
        f"{_img(pngs['size-' + d['name']], 'accuracy vs size')}</div>"
        for d in ranking["devices"])
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items() if v)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixprune report: {_e(model.get('name'))}</title>
<style>{CSS}</style></head><body>
<h1>mixprune report: {_e(model.get('name'))} on {_e(data.get('source'))}</h1>
<p class=sub>{len(ranking['candidates'])} candidates ({ranking['eligible_count']} eligible); objective
<b>{_e(ranking['objective'])}</b> on <b>{_e(ranking['choice_device'])}</b>; accuracy drop at most
{ranking['max_drop']:g} points; devices: {_e(', '.join(d['name'] for d in ranking['devices']))}.
Every choice (eligibility, ties, the Pareto front) uses the tune split ({ranking['tune_samples']} training
images held back from fitting); the accuracies shown are on the held-out split ({ranking['samples']} images),
which no choice has seen.</p>
{box}
<h2>Speed</h2>{notes}
<h2>Mix-and-Match vs global pruning at the same sparsity</h2>
{_img(pngs['sparsity'], 'accuracy vs global sparsity')}
{_baseline_table(ranking)}
<h2>Per device: accuracy vs latency and size</h2>
<p>Solid markers are eligible, faded ones are excluded (reasons in the table below); the chosen one is circled in red;
the Pareto front, ringed in black (tune accuracy, p50 latency, peak RSS, compact size; latency and memory differences within
measured noise count as ties).</p>
{device_figs}
<h2>Per-layer sparsity of the chosen candidate</h2>
{_img(pngs['layers'], 'per-layer sparsity')}
<h2>Every candidate</h2>
<p>Choice rule: {_e(ranking['rule'])}.</p>
{_candidate_table(ranking)}
<p class=sub>Records: {_e(ranking_path)}. {_e(versions)}.</p>
</body></html>
"""


def write_report(run_dir) -> RunDir:
    """Draw report.html and pareto.png from the run's ranking.json and strategy records; returns the RunDir."""
    run = RunDir(run_dir)
    ranking = run.read_ranking()
    if ranking is None:
        raise RunDirError(f"{run.ranking_json} does not exist; run `mixprune rank {run.root}` first")
    strategies = {row["cid"]: run.candidate(row["cid"]).read_strategy() for row in ranking["candidates"]}
    pngs = figures(ranking, strategies)
    atomic_write_bytes(run.pareto_png, pngs["pareto"])
    chosen = ranking["chosen"]
    described = describe(strategies[chosen], run.candidate(chosen).read_export()) if chosen else None
    atomic_write_bytes(run.report_html, render_html(ranking, run.require(), run.root, pngs, described).encode())
    return run
