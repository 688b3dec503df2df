"""The report's seven figures, in one seaborn style, each saved as PNG and PDF.

Each ``fig_*`` function takes the data it shows and returns ``(Figure, caption)``, or ``None`` after
adding a note when it has nothing to show. Sizes are for a paper: 7 inches wide (a full text
width) at 9-10 pt type, so a figure reads well when placed at its natural size. Every model keeps
one colour in every figure (`model_colors`); random backbones are grey.

Intervals are the stored ones (``ci95`` of the records: 1.96 s / sqrt(n) over episodes, or the
crowding metrics' jackknife over classes), never re-estimated here. Records of one model taken
under other settings (suite, episodes, seed) go to panels of their own, named by those settings.
Every name shown (models, data sets) is drawn as written: a ``$`` is escaped (`literal`), not read
as the start of matplotlib's mathtext.
"""
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from analysis.load import REFERENCES, SETTINGS, model_order
from analysis.tables import AXES, metric_name, setting_name
from tasks.common.io import atomic_path

WIDTH = 7.0  # inches: a full text width
THEME = {"context": "paper", "style": "whitegrid", "palette": "colorblind", "font_scale": 1.05,
         "rc": {"pdf.fonttype": 42, "axes.titleweight": "bold", "axes.titlesize": 10,
                "legend.frameon": False, "figure.dpi": 100}}
DPI = 200
CROWDING = ("intra_class_variance", "inter_class_separation", "crowding_ratio", "crowded_share")
LOG_HIDDEN = ("epoch", "time", "img_per_s")  # metrics.jsonl fields that are not training curves


def literal(text):
    """``text`` as matplotlib draws it literally: each ``$`` escaped, so no name starts mathtext."""
    return str(text).replace("$", r"\$")


def apply_theme():
    """Set the report's seaborn theme (once, before any figure is made)."""
    sns.set_theme(**THEME)


def new_figure(width, height):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, out, name):
    """Write ``fig`` as ``out/name.png`` and ``out/name.pdf``, each atomically; return the names."""
    files = []
    for fmt in ("png", "pdf"):
        with atomic_path(out / f"{name}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
        files.append(f"{name}.{fmt}")
    return files


def model_colors(df):
    """One colour per model: the colourblind palette in model order, greys for the references
    (random backbones, the pixel baseline)."""
    models = model_order(df)
    random = set(df.loc[df["variant"].isin(list(REFERENCES)), "model"])
    trained = [m for m in models if m not in random]
    colors = dict(zip(trained, sns.color_palette("colorblind", max(len(trained), 1))))
    greys = np.linspace(0.55, 0.75, max(len(random), 1))
    colors.update({m: (g, g, g) for m, g in zip([m for m in models if m in random], greys)})
    return colors


def _legend(fig, models, colors, lines=False, extra=()):
    """One legend under the figure: a patch (or a line) per model in order, then ``extra``
    (handle, label) pairs."""
    handles = [Line2D([], [], color=colors[m], marker="o", markersize=4) if lines else
               Patch(facecolor=colors[m]) for m in models] + [h for h, _ in extra]
    labels = list(models) + [name for _, name in extra]
    longest = max(len(name) for name in labels)
    columns = max(1, min(len(labels), int(WIDTH // (0.07 * longest + 0.5))))
    fig.legend(handles, [literal(name) for name in labels], loc="outside lower center", ncol=columns)


def _bars(ax, data, group, groups, models, colors, horizontal=False):
    """Bars of ``value`` with their stored intervals as black error bars, one slot per entry of
    ``groups`` (values of column ``group``); within a slot one bar per model in ``models`` (or a
    single bar when ``group`` is ``"model"``). A missing value leaves a gap."""
    per_slot = [None] if group == "model" else models
    width = 0.8 / len(per_slot)
    for i, model in enumerate(per_slot):
        rows = (data if model is None else data[data["model"] == model]).set_index(group)
        for j, name in enumerate(groups):
            if name not in rows.index:
                continue
            value, ci95 = rows.loc[name, "value"], rows.loc[name, "ci95"]
            at, color = j - 0.4 + width * (i + 0.5), colors[model if model else name]
            err = ci95 if pd.notna(ci95) else None
            if horizontal:
                ax.barh(at, value, height=width, color=color)
                ax.errorbar(value, at, xerr=err, fmt="none", ecolor="0.15", elinewidth=1,
                            capsize=2)
            else:
                ax.bar(at, value, width=width, color=color)
                ax.errorbar(at, value, yerr=err, fmt="none", ecolor="0.15", elinewidth=1,
                            capsize=2)
    if horizontal:
        ax.set_yticks(range(len(groups)), [literal(g) for g in groups])
        ax.grid(axis="y", visible=False)  # category lines would cut through the bars
    else:
        ax.set_xticks(range(len(groups)), [literal(g) for g in groups])
        ax.grid(axis="x", visible=False)


def _axis_order(values):
    known = [a for a in AXES if a in set(values)]
    return known + sorted(set(values) - set(AXES) - {"overall"}) + (
        ["overall"] if "overall" in set(values) else [])


def _fewshot(df):
    fewshot = df[(df["metric"] == "accuracy") & (df["protocol"] == "fewshot")
                 & df["shots"].notna() & df["ways"].notna()].copy()
    fewshot["setting"] = [f"{w}-way {s}-shot" for w, s in zip(fewshot["ways"], fewshot["shots"])]
    fewshot["axis"] = fewshot["axis"].fillna("?")
    return fewshot


def _facets(data, fields):
    """One panel per combination of axis and ``fields`` that has data, ordered by axis (in the
    axes' order), as (title, rows); a title names the axis and the fields that vary."""
    keys = ["axis", *fields]
    groups = [(key, rows) for key, rows in data.groupby(keys, dropna=False, sort=True)]
    axes = _axis_order(data["axis"].unique())
    groups.sort(key=lambda g: axes.index(g[0][0]))
    varying = [name for name in fields if data[name].nunique(dropna=False) > 1]
    facets = []
    for key, rows in groups:
        named = dict(zip(keys, key))
        what = ", ".join([str(named["axis"]), *(setting_name(f, named[f]) for f in varying if f not in SETTINGS)])
        how = ", ".join(setting_name(f, named[f]) for f in varying if f in SETTINGS)  # on a line of its own
        facets.append((literal(what + (f"\n{how}" if how else "")), rows))
    return facets


def _grid(facets, models, panel_height=2.5):
    """A figure with up to three panels a row for ``facets``, unused cells hidden."""
    columns = min(3, len(facets))
    rows = -(-len(facets) // columns)
    legend_rows = -(-(len(models) + 1) // 3)
    fig = new_figure(WIDTH, panel_height * rows + 0.3 + 0.22 * legend_rows)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax in axes[len(facets):]:
        ax.set_visible(False)
    return fig, axes, columns


def _shots_order(settings):
    return sorted(settings, key=lambda s: tuple(int(p.split("-")[0]) for p in s.split()))


def fig_fewshot(df, notes):
    """Figure 1: few-shot accuracy per model with interval bars, a panel per axis (and dataset)."""
    data = _fewshot(df)
    if data.empty:
        notes.add("figure 1 (few-shot accuracy) skipped: no few-shot accuracy records")
        return None
    colors, models = model_colors(df), [m for m in model_order(df) if m in set(data["model"])]
    facets = _facets(data, ["dataset", "split", "classifier", "queries", *SETTINGS])
    fig, axes, columns = _grid(facets, models)
    for i, (ax, (title, panel)) in enumerate(zip(axes, facets)):
        _bars(ax, panel, "setting", _shots_order(panel["setting"].unique()), models, colors)
        for ways in panel["ways"].unique():
            ax.axhline(100 / ways, color="0.3", linestyle="--", linewidth=1)
        ax.set(title=title, ylim=(0, 100), xlabel="",
               ylabel="accuracy (%)" if i % columns == 0 else "")
    _legend(fig, models, colors, extra=[(Line2D([], [], color="0.3", linestyle="--"), "chance")])
    episodes = ", ".join(map(str, sorted(data["episodes"].dropna().unique()))) or "?"
    queries = ", ".join(map(str, sorted(data["queries"].dropna().unique()))) or "?"
    return fig, (f"Few-shot accuracy (%) per model and axis: mean over {episodes} episodes of "
                 f"{queries} queries per class; bars are 95% intervals, the dashed line is "
                 f"chance (100 / ways).")


def fig_shots(df, notes):
    """Figure 2: accuracy against the number of shots, a line per model, a panel per axis."""
    data = _fewshot(df)
    if data.empty or data["shots"].nunique() < 2:
        notes.add("figure 2 (accuracy against shots) skipped: it needs few-shot accuracy at two "
                  "or more numbers of shots")
        return None
    colors, models = model_colors(df), [m for m in model_order(df) if m in set(data["model"])]
    facets = _facets(data, ["dataset", "split", "classifier", "ways", "queries", *SETTINGS])
    fig, axes, columns = _grid(facets, models)
    offsets = np.linspace(-0.04, 0.04, len(models)) if len(models) > 1 else [0.0]
    for i, (ax, (title, panel)) in enumerate(zip(axes, facets)):
        for model, shift in zip(models, offsets):
            line = panel[panel["model"] == model].sort_values("shots")
            if line.empty:
                continue
            x = line["shots"].astype(float) * 2 ** shift  # a small dodge on the log axis
            ax.errorbar(x, line["value"], yerr=line["ci95"].astype(float), color=colors[model],
                        marker="o", markersize=4, linewidth=1.5, capsize=2)
        shots = sorted(panel["shots"].unique())
        ax.set_xscale("log")
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
        ax.set(title=title, xlabel="shots (log scale)",
               ylabel="accuracy (%)" if i % columns == 0 else "")
    _legend(fig, models, colors, lines=True)
    return fig, ("Few-shot accuracy (%) against the number of labelled examples per class "
                 "(shots), with 95% intervals; each line is one model.")


def fig_sigma(df, notes):
    """Figure 3: the σ universality score per axis and model."""
    data = df[(df["protocol"] == "universality") & (df["metric"] == "sigma")].copy()
    if data.empty:
        notes.add("figure 3 (σ universality per axis) skipped: no σ universality records "
                  "(protocol 'universality', metric 'sigma'); the evaluation suite writes them")
        return None
    data["axis"] = data["axis"].fillna("overall")
    colors, models = model_colors(df), [m for m in model_order(df) if m in set(data["model"])]
    missing = sorted(set(df["model"]) - set(data["model"]))
    if missing:
        notes.add(f"figure 3: no σ universality records for {', '.join(missing)}")
    fields = ["classifier", "queries", *SETTINGS]
    varying = [f for f in fields if data[f].nunique(dropna=False) > 1]
    # the axes' datasets differ: one bar each
    groups = list(data.groupby(["ways", "shots", *fields], dropna=False))
    fig = new_figure(WIDTH, 2.8 * len(groups) + 0.5 + 0.25 * len(models) / 3)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, ((ways, shots, *key), panel) in zip(axes, groups):
        _bars(ax, panel, "axis", _axis_order(panel["axis"].unique()), models, colors)
        named = dict(zip(fields, key))
        parts = ([f"{ways}-way {shots}-shot"] if pd.notna(ways) and pd.notna(shots) else []) + [
            setting_name(f, named[f]) for f in varying]
        ax.set(title=literal(", ".join(parts)) if parts else None, xlabel="", ylabel=metric_name("sigma"))
    _legend(fig, models, colors)
    return fig, ("σ universality score per axis (and overall) for each model, with 95% "
                 "intervals.")


def fig_crowding(df, notes):
    """Figure 4: the crowding metrics per model, a panel per metric."""
    data = df[(df["protocol"] == "crowding") & df["metric"].isin(CROWDING)].copy()
    if data.empty:
        notes.add("figure 4 (crowding) skipped: no crowding records (protocol 'crowding')")
        return None
    missing = sorted(set(df["model"]) - set(data["model"]))
    if missing:
        notes.add(f"figure 4: no crowding metrics for {', '.join(missing)}")
    metrics = [m for m in CROWDING if m in set(data["metric"])]
    colors, models = model_colors(df), [m for m in model_order(df) if m in set(data["model"])]
    data["axis"] = data["axis"].fillna("?")
    varying = [f for f in SETTINGS if data[f].nunique(dropna=False) > 1]
    groups = sorted(data.groupby(["dataset", "split", "axis", *SETTINGS], dropna=False),
                    key=lambda group: (_axis_order(data["axis"].unique()).index(group[0][2]), str(group[0][0]),
                                       tuple(map(str, group[0][3:]))))
    height = 0.28 * len(models) + 0.9
    fig = new_figure(WIDTH, height * len(groups) + 0.3)
    axes = fig.subplots(len(groups), len(metrics), squeeze=False, sharey=True)
    for r, (key, rows) in enumerate(groups):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            panel = rows[rows["metric"] == metric]
            _bars(ax, panel, "model", models, models, colors, horizontal=True)
            ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top (the axes share y)
            ax.set(title=metric_name(metric).replace(" ", "\n", 1), xlabel="", ylabel="")
            ax.set_xlim(0, None)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # short labels
            if c == 0 and len(groups) > 1:  # which data the row shows, in two or three short lines
                dataset, split, axis, *how = key
                how = ", ".join(setting_name(f, v) for f, v in zip(SETTINGS, how) if f in varying)
                ax.set_ylabel(literal(f"{axis}\n{dataset} ({split})" + (f"\n{how}" if how else "")),
                              fontsize="x-small")
    return fig, ("Crowding of the classes of each axis on frozen, L2-normalised features, per model "
                 "(↑: higher is better, ↓: lower is better): intra-class variance, inter-class "
                 "separation (mean distance between class centroids), crowding ratio "
                 "(variance / separation²) and crowded share (share of samples nearer another "
                 "class's centroid), with 95% jackknife intervals over classes.")


def project(features, method="pca", seed=0):
    """2-D map of L2-normalised ``features``: PCA (with the variance share of each component) or
    t-SNE (scikit-learn). Returns (points [n, 2], axis labels)."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if method == "tsne":
        from sklearn.manifold import TSNE
        points = TSNE(n_components=2, init="pca", random_state=seed,
                      perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)
        return points, ("t-SNE 1", "t-SNE 2")
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    points = x @ vt[:2].T
    share = s ** 2 / max((s ** 2).sum(), 1e-12)
    return points, tuple(f"PC{i + 1} ({100 * share[i]:.0f}%)" for i in range(2))


def fig_feature_map(df, samples, chosen, method, notes):
    """Figure 5: 2-D maps of a labelled feature sample, coloured by class, for chosen models."""
    chosen = [m for m in chosen if m in samples]
    if not chosen:
        notes.add("figure 5 (feature maps) skipped: no feature_sample.npz for the chosen models "
                  "(`python -m gessl.evaluate RUN_DIR` writes one)")
        return None
    if method == "tsne":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            notes.add("figure 5: t-SNE needs scikit-learn (pip install scikit-learn); the maps "
                      "use PCA")
            method = "pca"
    indices = {tuple(samples[m][2]) for m in chosen}
    if len(indices) > 1:
        notes.add("figure 5: the models' feature samples hold different images (evaluated with "
                  "different seeds or data); the maps are not of the same images")
    variants = df.drop_duplicates("model").set_index("model")["variant"]
    columns = min(len(chosen), 4)
    rows = -(-len(chosen) // columns)
    side = WIDTH / columns
    fig = new_figure(WIDTH, side * rows + 0.3)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, model in zip(axes, chosen):
        features, labels, _ = samples[model]
        points, (xlabel, ylabel) = project(np.asarray(features, dtype=np.float64), method)
        classes = np.unique(labels)
        palette = sns.color_palette("tab20" if len(classes) <= 20 else "husl", len(classes))
        for color, label in zip(palette, classes):
            at = labels == label
            ax.scatter(points[at, 0], points[at, 1], s=9, color=color, linewidths=0)
        ax.set(xticks=[], yticks=[], xlabel=xlabel, ylabel=ylabel,
               title=literal(model if variants.get(model, "?") in model else
                           f"{model}\n({variants.get(model, '?')})"))
        ax.set_aspect("equal", adjustable="datalim")
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    features, labels, _ = samples[chosen[0]]
    name = "PCA (axis labels: share of the variance)" if method == "pca" else "t-SNE"
    return fig, (f"{name} of frozen, L2-normalised features of {len(labels)} images from "
                 f"{len(np.unique(labels))} unseen classes (the same images for every model when "
                 f"evaluated with the same seed), one colour per class.")


def _curve_quantities(metrics):
    """Quantities of the training logs worth a curve, in a readable order: losses, σ, lr.

    Timings, throughput and gradient norms are left out, and so is a loss term that equals the
    total loss in every run (the base loss of a plain run).
    """
    names = [q for q in metrics["quantity"].unique()
             if q not in LOG_HIDDEN and not q.startswith("time_") and "grad" not in q]
    wide = metrics.pivot_table(index=["model", "step"], columns="quantity", values="value")
    if "loss" in wide:
        names = [q for q in names if q == "loss" or not np.allclose(
            wide[q].to_numpy(), wide["loss"].to_numpy(), rtol=0, atol=0, equal_nan=False)]
    def rank(q):
        if q == "loss":
            return (0, q)
        if q == "lr":
            return (3, q)
        return (2, q) if q.startswith("sigma") else (1, q)
    return sorted(names, key=rank)


def fig_training(df, metrics, notes):
    """Figure 6: training curves (loss terms, σ, learning rate) against step, a line per model."""
    if metrics.empty:
        notes.add("figure 6 (training curves) skipped: no run has a metrics.jsonl")
        return None
    quantities = _curve_quantities(metrics)
    colors = model_colors(df)
    models = [m for m in model_order(df) if m in set(metrics["model"])]
    columns = min(3, len(quantities))
    rows = -(-len(quantities) // columns)
    fig = new_figure(WIDTH, 2.0 * rows + 0.5 + 0.25 * len(models) / 3)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    steps = (metrics["step"].min(), metrics["step"].max())
    margin = 0.04 * (steps[1] - steps[0]) or 0.5
    for i, (ax, quantity) in enumerate(zip(axes, quantities)):
        panel = metrics[metrics["quantity"] == quantity]
        name = {"lr": "learning rate", "sigma_kl": "σ (KL to the target)", "sigma": "σ (KL to the target)"}.get(quantity, quantity.replace("_", " "))
        largest = panel["value"].abs().max()
        power = int(np.floor(np.log10(largest))) if largest > 0 else 0
        scale = 10.0 ** power if power < -1 or power > 3 else 1.0  # shown in the title
        for model in models:
            line = panel[panel["model"] == model].sort_values("step")
            if len(line):
                ax.plot(line["step"], line["value"] / scale, color=colors[model], linewidth=1.4,
                        marker="o" if len(line) <= 20 else None, markersize=2.5)
        ax.set(title=name + (f" (×1e{power})" if scale != 1.0 else ""),
               xlim=(steps[0] - margin, steps[1] + margin),
               xlabel="step" if i + columns >= len(quantities) else "")  # under each column
    for ax in axes[len(quantities):]:
        ax.set_visible(False)
    _legend(fig, models, colors, lines=True)
    return fig, ("Training curves against optimiser step from each run's metrics.jsonl: the "
                 "total loss, its named terms, GeSSL's σ (when on) and the learning rate.")


def fig_paired(paired, notes):
    """Figure 7: paired differences A − B over the same episodes, with 95% intervals."""
    if paired.empty:
        notes.add("figure 7 (paired differences) skipped: no pair of models scored on the same "
                  "episodes (by default each +DSA / +GeSSL run is paired with the plain run of "
                  "its base; choose pairs with --pair A B)")
        return None
    paired = paired.assign(pair=paired["model_a"] + " − " + paired["model_b"],
                           setting=[f"{w}-way {s}-shot" for w, s in
                                    zip(paired["ways"], paired["shots"])])
    pairs = list(dict.fromkeys(paired["pair"]))
    settings = sorted(paired["setting"].unique(), key=lambda s: tuple(
        int(p.split("-")[0]) for p in s.split()))
    colors = dict(zip(settings, sns.color_palette("dark", len(settings))))
    groups = list(paired.groupby(["dataset", "split", "axis", "episodes", "seed"], dropna=False))
    height = 0.45 * len(pairs) * max(1, len(settings) / 2) + 1.0
    fig = new_figure(WIDTH, height * len(groups) + 0.4)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    step = 0.6 / max(len(settings), 1)
    for ax, (key, rows) in zip(axes, groups):
        for i, setting in enumerate(settings):
            part = rows[rows["setting"] == setting].set_index("pair")
            for j, pair in enumerate(pairs):
                if pair not in part.index:
                    continue
                r = part.loc[pair]
                y = j - 0.3 + step * (i + 0.5)
                ax.errorbar(r["difference"], y, xerr=r["ci95"], fmt="o", color=colors[setting],
                            markersize=4, capsize=2, elinewidth=1.2)
                text = f"{r['difference']:+.1f} ± {r['ci95']:.1f}".replace("-", "−")
                ax.annotate(text, (r["difference"] + r["ci95"], y), xytext=(4, 0),
                            textcoords="offset points", ha="left", va="center", fontsize=7.5,
                            color=colors[setting])
        ax.axvline(0, color="0.3", linewidth=1)
        ax.set_yticks(range(len(pairs)), [literal(p) for p in pairs])
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        dataset, split, axis, episodes, seed = key
        where = [str(v) for v in (dataset, split, axis) if pd.notna(v)]
        how = [setting_name(f, v) for f, v in (("episodes", episodes), ("seed", seed)) if pd.notna(v)]
        ax.set(xlabel="accuracy difference A − B (points)", ylabel="", title=literal(", ".join(where + how)))
        ax.margins(x=0.2)
    handles = [(Line2D([], [], color=colors[s], marker="o", linestyle=""), s) for s in settings]
    fig.legend([h for h, _ in handles], [label for _, label in handles],
               loc="outside lower center", ncol=len(handles))
    return fig, ("Paired differences in few-shot accuracy between two models on the same "
                 "episodes: mean of the per-episode difference A − B with its 95% interval "
                 "(1.96 s / √n over episodes); an interval clear of 0 is a difference the "
                 "episodes resolve.")


def fig_study(table, reference, label):
    """A study's paired differences variant − ``reference`` across training seeds
    (``benchmarks/study.py``'s table rows against the reference), 1-shot settings only: one row of
    panels per setting, one column per training set and budget, the variants down each panel, the
    interval over seeds (over episodes for a single seed). ``label(setting)`` names a setting.
    ``None`` when the table has no such row."""
    rows = pd.DataFrame([r for r in table if r["against"] == reference and "1-shot" in r["setting"]])
    if rows.empty:
        return None
    rows["half"] = np.where(rows["seeds"] > 1, rows["ci95_seeds"], rows["ci95_episodes"])
    columns = list(dict.fromkeys(zip(rows["dataset"], rows["budget"])))
    settings = list(dict.fromkeys(rows["setting"]))
    variants = list(dict.fromkeys(rows["variant"]))
    colors = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    fig = new_figure(WIDTH, (0.16 * len(variants) + 0.55) * len(settings) + 0.6)
    axes = fig.subplots(len(settings), len(columns), squeeze=False, sharey=True)
    for i, setting in enumerate(settings):
        for j, (dataset, budget) in enumerate(columns):
            ax = axes[i, j]
            part = rows[(rows["setting"] == setting) & (rows["dataset"] == dataset) & (rows["budget"] == budget)]
            for _, r in part.iterrows():
                y = variants.index(r["variant"])
                ax.errorbar(r["difference"], y, xerr=np.nan_to_num(r["half"]), fmt="o", markersize=3.5,
                            capsize=1.5, elinewidth=1.1, color=colors[r["variant"]],
                            alpha=1.0 if r["seeds"] > 1 else 0.45)
            ax.axvline(0, color="0.3", linewidth=0.9)
            ax.set_yticks(range(len(variants)), variants, fontsize=7.5)
            ax.set_ylim(len(variants) - 0.5, -0.5)
            ax.tick_params(axis="x", labelsize=7.5)
            if i == 0:
                ax.set_title(f"trained on {dataset}\n{budget}", fontsize=8.5)
            if j == 0:
                ax.set_ylabel(label(setting), fontsize=8)
            if not part.empty:
                ax.set_xlim(min(-2.0, (part["difference"] - part["half"].fillna(0)).min() - 1),
                            max(2.0, (part["difference"] + part["half"].fillna(0)).max() + 1))
    fig.supxlabel(f"accuracy difference variant − {reference} (points)", fontsize=8.5)
    return fig, (f"Few-shot accuracy of each variant minus {reference}'s on the same episodes (1-shot "
                 f"settings, one row each): the mean over training seeds of the per-seed paired difference "
                 f"with its 95% interval over seeds (t s / √n); faint points have one seed and its interval "
                 f"over episodes (1.96 s / √n).")
