"""Turn evaluation results into a report: a tidy table, a few-shot figure and a page that shows both.

``python -m analysis.report DIR... --out OUT`` reads every ``results.jsonl`` at or under each DIR
(a run folder, or a folder of run folders searched recursively) and writes, each file atomically:

- ``OUT/results.csv``: one row per measurement; when a run was evaluated more than once, only the
  latest record (by ``time``) of each (run, dataset, split, axis, protocol, classifier, ways, shots,
  queries, metric) is kept;
- ``OUT/fewshot_accuracy.png``: few-shot accuracy (%) per run and shots as grouped bars with the
  stored 95% intervals (mean +/- 1.96 std / sqrt(episodes), not re-bootstrapped) and a dashed
  chance line at 100 / ways; one panel per (axis, dataset, split, protocol, classifier, ways);
- ``OUT/index.html``: the figure with a one-line caption and the table, openable from disk.

Only result files are read: this module imports no training code.
"""
import argparse
import html
import json
import sys
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tasks.errors import UserError
from tasks.io import atomic_path, atomic_write_text

KEY = ["run", "dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
       "metric"]
REQUIRED = KEY + ["value", "ci95", "time"]
COLUMNS = KEY + ["value", "ci95", "episodes", "seed", "version", "time"]
INTEGER_COLUMNS = ["ways", "shots", "queries", "episodes", "seed"]
PANEL = ["axis", "dataset", "split", "protocol", "classifier", "ways"]
FIGURE = "fewshot_accuracy.png"


def _note(message):
    print(f"note: {message}", file=sys.stderr)


def _find_results(paths):
    """Every ``results.jsonl`` at or under ``paths``, in a stable order."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist")
        found = [path] if path.is_file() else sorted(path.rglob("results.jsonl"))
        if not found:
            raise UserError(f"no results.jsonl under {path}; "
                            f"run `python -m gessl.evaluate RUN_DIR` first")
        files += found
    return files


def _read_one(file):
    """The valid records of one results.jsonl as a DataFrame; bad lines are skipped with a note."""
    records = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            _note(f"{file}:{number}: skipped, not a JSON object")
    if not records:
        raise UserError(f"{file}: no valid records")
    df = pd.DataFrame.from_records(records)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{file}: records lack required field(s) {', '.join(missing)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["ci95"] = pd.to_numeric(df["ci95"], errors="coerce")
    df["_time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601", errors="coerce")
    valid = df["value"].notna() & df["_time"].notna() & df["run"].notna() & df["metric"].notna()
    if not valid.any():
        raise UserError(f"{file}: no valid records (each needs run, metric, a numeric value and "
                        f"an ISO-8601 time)")
    if not valid.all():
        _note(f"{file}: skipped {(~valid).sum()} record(s) without run, metric, a numeric value "
              f"or an ISO-8601 time")
    return df[valid]


def _as_integers(column):
    numbers = pd.to_numeric(column, errors="coerce")
    if (numbers.dropna() % 1 != 0).any():
        raise UserError(f"field {column.name!r} holds non-integer values")
    return numbers.astype("Int64")


def load_results(paths):
    """Read every results.jsonl at or under ``paths`` into one tidy DataFrame, latest record wins.

    Raises UserError for a path that does not exist, a path with no results.jsonl under it, and a
    file with no valid records or without the required fields.
    """
    df = pd.concat([_read_one(f) for f in _find_results(paths)], ignore_index=True)
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = pd.NA
    for column in INTEGER_COLUMNS:
        df[column] = _as_integers(df[column])
    df = (df.sort_values("_time", kind="stable")
            .drop_duplicates(KEY, keep="last")
            .sort_values(["dataset", "split", "axis", "protocol", "classifier", "metric", "ways",
                          "shots", "run"], kind="stable"))
    extra = [c for c in df.columns if c not in COLUMNS and c != "_time"]
    return df[COLUMNS + extra].reset_index(drop=True)


def _fewshot(df):
    """The few-shot accuracy rows (those with a number of shots), with the shots as a label."""
    fewshot = df[(df["metric"] == "accuracy") & df["shots"].notna()].copy()
    fewshot["shots_label"] = fewshot["shots"].map(lambda s: f"{s}-shot")
    return fewshot


def _panel_title(key, varying):
    panel = dict(zip(PANEL, key))
    title = f"{panel['dataset']} ({panel['split']}), {panel['ways']}-way, {panel['classifier']}"
    extras = [str(panel[name]) for name in ("axis", "protocol") if name in varying]
    return title + ("\n" + ", ".join(extras) if extras else "")


def plot_fewshot(df, path):
    """Grouped bars of few-shot accuracy (x: shots, hue: run) with stored 95% intervals, to PNG."""
    fewshot = _fewshot(df)
    if fewshot.empty:
        raise UserError("no few-shot accuracy records (metric 'accuracy' with shots) to plot")
    panels = list(fewshot.groupby(PANEL, dropna=False, sort=True))
    varying = [c for c in PANEL if fewshot[c].nunique(dropna=False) > 1]
    runs = sorted(fewshot["run"].unique())
    palette = dict(zip(runs, sns.color_palette("colorblind", len(runs))))
    rows = -(-len(panels) // 3)
    columns = -(-len(panels) // rows)
    width = 4.2 * columns + 1.0
    entry_width = 0.085 * max(len(r) for r in runs) + 0.7  # inches per legend entry, roughly
    legend_columns = max(1, min(len(runs) + 1, int((width - 0.5) // entry_width)))
    legend_rows = -(-(len(runs) + 1) // legend_columns)

    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.3):
        fig = Figure(figsize=(width, 3.4 * rows + 0.3 * legend_rows + 0.5),
                     layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
        for ax, (key, data) in zip(axes, panels):
            order = [f"{s}-shot" for s in sorted(data["shots"].unique())]
            sns.barplot(data=data, x="shots_label", y="value", hue="run", order=order,
                        hue_order=runs, palette=palette, errorbar=None, dodge=True, ax=ax)
            # seaborn draws one bar container per run (hue_order), bars centred near their x index.
            ci95 = data.set_index(["run", "shots_label"])["ci95"]
            for run, bars in zip(runs, ax.containers):
                for bar in bars:
                    x = bar.get_x() + bar.get_width() / 2
                    ci = ci95.get((run, order[round(x)]))
                    if pd.notna(ci):
                        ax.errorbar(x, bar.get_height(), yerr=ci, fmt="none", ecolor="0.15",
                                    elinewidth=1.2, capsize=3)
            ways = key[PANEL.index("ways")]
            if pd.notna(ways):
                ax.axhline(100 / ways, color="0.35", linestyle="--", linewidth=1.2, label="chance")
            ax.set(xlabel="", ylabel="accuracy (%)", ylim=(0, 100),
                   title=_panel_title(key, varying))
            ax.get_legend().remove()
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=legend_columns,
                   frameon=False)
        fig.suptitle("Few-shot accuracy with 95% intervals", fontweight="bold")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=150)


def _caption(df):
    fewshot = _fewshot(df)
    queries = ", ".join(str(q) for q in sorted(fewshot["queries"].dropna().unique()))
    episodes = ", ".join(str(e) for e in sorted(fewshot["episodes"].dropna().unique()))
    return (f"Few-shot accuracy (%) of {fewshot['run'].nunique()} runs: mean over "
            f"{episodes or '?'} episodes of {queries or '?'} queries per class, error bars are "
            f"95% intervals, the dashed line is chance (100 / ways).")


def write_report(df, out):
    """Write results.csv, fewshot_accuracy.png and index.html (each atomically) into ``out``."""
    out = Path(out)
    plot_fewshot(df, out / FIGURE)
    with atomic_path(out / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    table = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.2f}", border=0,
                       classes="results")
    atomic_write_text(out / "index.html", f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gessl report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
img {{ max-width: 100%; }}
table.results {{ border-collapse: collapse; font-size: 0.9em; }}
table.results th, table.results td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; }}
table.results td {{ text-align: right; }}
</style></head><body>
<h1>gessl report</h1>
<figure><img src="{FIGURE}" alt="few-shot accuracy per run and shots">
<figcaption>{html.escape(_caption(df))}</figcaption></figure>
<h2>Results (<a href="results.csv">results.csv</a>)</h2>
{table}
</body></html>
""")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Collect the results.jsonl of evaluated runs into OUT/results.csv, a few-shot "
                    "accuracy figure OUT/fewshot_accuracy.png and a page OUT/index.html.",
        epilog="Example: python -m analysis.report runs/ --out report/ "
               "(runs/ holds run folders evaluated with `python -m gessl.evaluate RUN_DIR`).")
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="a run folder with results.jsonl, a folder searched recursively "
                             "for run folders, or a results.jsonl file")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="folder to write the report into (created if missing)")
    args = parser.parse_args(argv)
    try:
        df = load_results(args.dirs)
        write_report(df, args.out)
    except UserError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {Path(args.out) / 'index.html'} ({len(df)} results from "
          f"{df['run'].nunique()} runs)")


if __name__ == "__main__":
    main()
