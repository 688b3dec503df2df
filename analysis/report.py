"""Turn evaluated run folders into the tables and figures a paper needs, and a page that shows them.

``python -m analysis.report DIR... --out OUT`` reads every run folder at or under each DIR (a run
folder, a folder searched recursively for ``results.jsonl``, or a ``results.jsonl`` file): its
``results.jsonl`` (required), ``config.yaml``, ``metrics.jsonl``, ``feature_sample.npz`` and
``episodes.npz`` (`analysis.load`). When a run was evaluated more than once, only the latest
record (by ``time``) of each (run, dataset, split, axis, protocol, classifier, ways, shots,
queries, metric) counts. It writes into OUT, each file atomically:

- ``results.csv``: one row per model x dataset x split x axis x protocol x classifier x ways x
  shots x queries x metric, with the model's base, variant and backbone, mean (``value``) and 95%
  interval (``ci95``) as stored, and ``best`` (the best value of that setting among the models);
- ``results.md``: the same as wide tables (models as rows, grouped by base with the plain, +DSA,
  +GeSSL variants next to each other; settings as columns; "mean ± interval", best in bold), and
  the paired differences;
- ``paired.csv``: paired differences A − B on the same episodes (`analysis.tables`);
- seven figures (`analysis.figures`), each as PNG and PDF: ``fig1_fewshot_accuracy``,
  ``fig2_accuracy_vs_shots``, ``fig3_sigma_universality``, ``fig4_crowding``,
  ``fig5_feature_map``, ``fig6_training_curves``, ``fig7_paired_differences``;
- ``index.html``: every figure with a one-line caption, the tables and the notes, openable from disk.

A missing piece (no σ records, a model without crowding metrics, a run without a training log,
feature sample or per-episode accuracies) skips what needs it, with a note on the page and on
stderr; only unreadable or absent results stop the report.

Only result files are read: this module imports no training code.
"""
import argparse
import html
import sys
from pathlib import Path

from analysis import figures
from analysis.load import (RANDOM_VARIANT, Notes, load_episodes, load_feature_samples,
                           load_metrics, load_results, model_order)
from analysis.tables import (AXES, default_pairs, grouped_rows, mark_best, paired_differences,
                             paired_markdown, to_markdown, wide_tables)
from tasks.common.errors import UserError
from tasks.common.io import atomic_path, atomic_write_text

__all__ = ["load_results", "write_report", "main"]
FIGURES = ["fig1_fewshot_accuracy", "fig2_accuracy_vs_shots", "fig3_sigma_universality",
           "fig4_crowding", "fig5_feature_map", "fig6_training_curves", "fig7_paired_differences"]
MAP_MODELS = 4


def resolve_model(df, name):
    """The model a name given on the command line means: a model name or a run name (of one model)."""
    if name in set(df["model"]):
        return name
    found = [model for model, sources in df.drop_duplicates("model")[["model", "sources"]].itertuples(index=False)
             if name in {run for _, run in sources}]
    if len(found) > 1:
        raise UserError(f"{name!r} names {len(found)} models ({', '.join(found)}); use one of those names")
    if found:
        return found[0]
    raise UserError(f"no model named {name!r}; the models are: {', '.join(model_order(df))}")


def default_map_models(df, samples):
    """Models for the feature maps: the variants of the first self-supervised base (plain, +DSA,
    +GeSSL ...), a supervised model, then a random backbone, at most ``MAP_MODELS``, among those
    with a feature sample."""
    models = df.drop_duplicates("model").set_index("model")
    order = [m for m in model_order(df) if m in samples]
    ssl = [m for m in order if models.loc[m, "variant"] != RANDOM_VARIANT
           and models.loc[m, "base"] not in ("supervised", "?")]
    first = [m for m in ssl if models.loc[m, "base"] == models.loc[ssl[0], "base"]] if ssl else []
    supervised = [m for m in order if models.loc[m, "base"] == "supervised"][:1]
    random = [m for m in order if models.loc[m, "variant"] == RANDOM_VARIANT][:1]
    chosen = (first[:MAP_MODELS - len(supervised)] + supervised + random)[:MAP_MODELS]
    return chosen or order[:MAP_MODELS]


def coverage_notes(df, notes):
    """Notes for the axes and protocols the evaluation suite measures that no record has."""
    axes = [a for a in AXES if a not in set(df["axis"])]
    if axes:
        notes.add(f"no results on the {' and '.join(axes)} ax{'es' if len(axes) > 1 else 'is'}; "
                  f"the evaluation suite adds them")
    protocols = [p for p in ("linear", "knn") if p not in set(df["protocol"])]
    if protocols:
        notes.add(f"no {' or '.join(protocols)} evaluation records; the evaluation suite adds them")


def _html_table(title, cells, best):
    shown = grouped_rows(cells)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for row, marks in zip(shown.itertuples(index=False), best.itertuples(index=False)):
        tds = []
        for i, (value, mark) in enumerate(zip(row, marks)):
            text = html.escape(str(value))
            tds.append(f"<td class=\"{'name' if i < 3 else 'num'}\">"
                       f"{'<strong>' + text + '</strong>' if mark and text else text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<h3>{html.escape(title)}</h3>\n<table class=\"results\"><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _html_paired(paired):
    if paired.empty:
        return ""
    rows = []
    for r in paired.itertuples():
        text = f"{r.difference:+.2f} ± {r.ci95:.2f}"
        text = f"<strong>{text}</strong>" if abs(r.difference) > r.ci95 else text
        rows.append(f"<tr><td class=\"name\">{html.escape(r.model_a)}</td><td class=\"name\">"
                    f"{html.escape(r.model_b)}</td><td class=\"name\">{html.escape(str(r.dataset))} "
                    f"{html.escape(str(r.axis))}: {r.ways}-way {r.shots}-shot</td>"
                    f"<td class=\"num\">{r.mean_a:.2f}</td><td class=\"num\">{r.mean_b:.2f}</td>"
                    f"<td class=\"num\">{text}</td><td class=\"num\">{r.n}</td></tr>")
    return ("<h3>Paired differences (accuracy points, A − B, same episodes; "
            "<a href=\"paired.csv\">paired.csv</a>)</h3>\n<table class=\"results\"><thead><tr>"
            "<th>A</th><th>B</th><th>setting</th><th>A (%)</th><th>B (%)</th><th>A − B</th>"
            "<th>episodes</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _page(shown, tables, paired, notes):
    figures_html = "\n".join(
        f'<figure id="{name}"><img src="{name}.png" alt="{html.escape(caption)}">'
        f'<figcaption><b>Figure {FIGURES.index(name) + 1}.</b> {html.escape(caption)} '
        f'(<a href="{name}.pdf">PDF</a>)</figcaption></figure>'
        for name, caption in shown)
    notes_html = ("<h2>Notes</h2>\n<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                  + "</ul>") if notes else ""
    tables_html = "\n".join(_html_table(*table) for table in tables)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gessl report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 75em; }}
img {{ max-width: 100%; width: 52em; }}
figure {{ margin: 2em 0; }}
figcaption {{ max-width: 52em; }}
table.results {{ border-collapse: collapse; font-size: 0.9em; margin-bottom: 1.5em; }}
table.results th, table.results td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; }}
table.results td.num {{ text-align: right; white-space: nowrap; }}
</style></head><body>
<h1>gessl report</h1>
<p>Tables: <a href="results.csv">results.csv</a> (one row per measurement),
<a href="results.md">results.md</a>. Best value of each column in bold (↑ higher / ↓ lower is
better); intervals are 95%.</p>
{figures_html}
<h2>Tables</h2>
{tables_html}
{_html_paired(paired)}
{notes_html}
</body></html>
"""


def write_report(df, out, notes=None, pairs=None, map_models=None, map_method="pca"):
    """Write the tables, figures and page of the module docstring into ``out``; return the notes.

    ``pairs``: (model A, model B) pairs for the paired differences (default: `default_pairs`);
    ``map_models``: models for the feature maps (default: `default_map_models`); ``map_method``:
    "pca" or "tsne" (falls back to PCA with a note when scikit-learn is not installed).
    """
    out = Path(out)
    notes = Notes() if notes is None else notes
    coverage_notes(df, notes)
    metrics = load_metrics(df, notes)
    samples = load_feature_samples(df, notes)
    episodes = load_episodes(df, notes)
    pairs = default_pairs(df, notes) if pairs is None else pairs
    paired = paired_differences(episodes, pairs, notes)
    chosen = default_map_models(df, samples) if map_models is None else map_models
    missing = [m for m in chosen if m not in samples]
    if missing:
        notes.add(f"figure 5: no feature_sample.npz for {', '.join(missing)}")

    figures.apply_theme()
    builders = {
        "fig1_fewshot_accuracy": lambda: figures.fig_fewshot(df, notes),
        "fig2_accuracy_vs_shots": lambda: figures.fig_shots(df, notes),
        "fig3_sigma_universality": lambda: figures.fig_sigma(df, notes),
        "fig4_crowding": lambda: figures.fig_crowding(df, notes),
        "fig5_feature_map": lambda: figures.fig_feature_map(df, samples, chosen, map_method, notes),
        "fig6_training_curves": lambda: figures.fig_training(df, metrics, notes),
        "fig7_paired_differences": lambda: figures.fig_paired(paired, notes),
    }
    shown = []
    for name in FIGURES:
        made = builders[name]()
        if made is not None:
            figure, caption = made
            figures.save(figure, out, name)
            shown.append((name, caption))
    for name in set(FIGURES) - {name for name, _ in shown}:  # figures of an earlier report
        for suffix in (".png", ".pdf"):
            (out / f"{name}{suffix}").unlink(missing_ok=True)

    table = mark_best(df).drop(columns=["folder", "sources"])
    with atomic_path(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    if paired.empty:
        (out / "paired.csv").unlink(missing_ok=True)
    else:
        with atomic_path(out / "paired.csv") as tmp:
            paired.to_csv(tmp, index=False)
    tables = wide_tables(df)
    markdown = "\n".join(to_markdown(*t) for t in tables)
    markdown += ("\n" + paired_markdown(paired)) if not paired.empty else ""
    markdown += ("\n### Notes\n\n" + "".join(f"- {n}\n" for n in notes)) if notes else ""
    atomic_write_text(out / "results.md", "# gessl results\n\nMean ± 95% interval; best of "
                      "each column in bold (↑ higher / ↓ lower is better).\n\n" + markdown)
    atomic_write_text(out / "index.html", _page(shown, tables, paired, notes))
    return notes


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Collect evaluated run folders (results.jsonl, config.yaml, metrics.jsonl, "
                    "feature_sample.npz, episodes.npz) into tables (OUT/results.csv, "
                    "OUT/results.md), seven figures (PNG and PDF) and a page OUT/index.html.",
        epilog="Example: python -m analysis.report runs/ --out report/ "
               "(runs/ holds run folders evaluated with `python -m gessl.evaluate RUN_DIR`).")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a run folder with results.jsonl, a folder searched recursively "
                             "for run folders, or a results.jsonl file")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="folder to write the report into (created if missing)")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"),
                        help="compare models A and B (model or run names) episode by episode; "
                             "repeatable (default: each +DSA / +GeSSL run against the plain run "
                             "of its base and backbone)")
    parser.add_argument("--map-models", nargs="+", metavar="MODEL",
                        help="models for the feature maps of figure 5 (default: the variants "
                             "of the first base, a supervised run and a random backbone, at "
                             f"most {MAP_MODELS})")
    parser.add_argument("--map", choices=["pca", "tsne"], default="pca",
                        help="2-D projection of the feature maps (t-SNE needs scikit-learn)")
    args = parser.parse_args(argv)
    notes = Notes()
    try:
        df = load_results(args.dirs, notes)
        pairs = None if args.pair is None else [
            (resolve_model(df, a), resolve_model(df, b)) for a, b in args.pair]
        chosen = None if args.map_models is None else [
            resolve_model(df, m) for m in args.map_models]
        write_report(df, args.out, notes, pairs=pairs, map_models=chosen, map_method=args.map)
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'index.html'} ({len(df)} results from "
          f"{df['model'].nunique()} models)")


if __name__ == "__main__":
    main()
