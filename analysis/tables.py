"""The report's tables: best per column, wide model x setting tables, paired differences.

Every number shown is a stored mean with its stored 95% interval (``value`` +- ``ci95`` of the
records, not re-computed), except the paired differences, which are computed here from the
per-episode accuracies of ``episodes.npz``: for two models scored on the same episodes, the
difference d_e = acc_A,e - acc_B,e of each episode e, reported as mean(d) +- 1.96 s(d) / sqrt(n)
(s the sample standard deviation, n the number of episodes). Pairing removes the episode-to-episode
variation both models share, so its interval is usually much narrower than either model's own.
"""
import numpy as np
import pandas as pd

from analysis.load import REFERENCES, SETTINGS, model_order
from tasks.evaluation.fewshot import paired

# Whether a higher or a lower value of a metric is better; other metrics are not marked best.
DIRECTION = {"accuracy": "max", "error": "min", "inter_class_separation": "max", "intra_class_variance": "min",
             "crowding_ratio": "min", "crowded_share": "min", "sigma": "min"}
SETTING = ["dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
           "metric"] + SETTINGS
# The labelled references (docs/bases.md: supervised, ProtoNet, MAML), shown beside the self-supervised
# models and, like the random backbone, never marked best.
REFERENCE_BASES = {"supervised", "protonet", "maml"}
EPISODE_SETTING = ["dataset", "split", "axis", "classifier", "ways", "shots", "queries",
                   "episodes", "seed"]
PROTOCOL_NAMES = {"knn": "kNN", "linear": "linear", "runs": "Lake's 20-way 1-shot runs"}
METRIC_NAMES = {"intra_class_variance": "intra-class variance",
                "inter_class_separation": "inter-class separation",
                "crowding_ratio": "crowding ratio", "crowded_share": "crowded share",
                "sigma": "σ", "accuracy": "accuracy (%)", "error": "error (%)"}
AXES = ("discriminability", "generalization", "transferability")


def metric_name(metric, arrow=True):
    """A metric's readable name, with ↑ or ↓ saying which way is better when that is known."""
    name = METRIC_NAMES.get(metric, str(metric).replace("_", " "))
    mark = {"max": " ↑", "min": " ↓"}.get(DIRECTION.get(metric), "")
    return name + (mark if arrow else "")


def setting_name(field, value):
    """How a figure's panel or a table's column names one value of a setting field: ``5-way``,
    ``15 queries``, ``40 episodes``, ``seed 1``, ``quick suite``; the value alone for other fields."""
    return {"ways": "{}-way", "queries": "{} queries", "episodes": "{} episodes", "seed": "seed {}",
            "suite": "{} suite"}.get(field, "{}").format(value)


def mark_best(df):
    """``df`` with a boolean ``best`` column: the best value of its setting among 2+ ranked models.

    A setting is every record field but the model (dataset, split, axis, protocol, classifier,
    ways, shots, queries, metric, suite, episodes, seed); better is higher or lower by
    ``DIRECTION``; ties are all best. References (the random backbone, the pixel baseline,
    ``REFERENCE_BASES``) and values that are not finite are never ranked.
    """
    df = df.copy()
    df["best"] = False
    ranked = df[~df["variant"].isin(list(REFERENCES)) & ~df["base"].isin(REFERENCE_BASES)
                & np.isfinite(df["value"].astype(float))]
    for _, rows in ranked.groupby(SETTING, dropna=False, sort=False):
        direction = DIRECTION.get(rows["metric"].iloc[0])
        if direction is None or rows["model"].nunique() < 2:
            continue
        best = rows["value"].max() if direction == "max" else rows["value"].min()
        df.loc[rows.index[rows["value"] == best], "best"] = True
    return df


def section_of(row):
    if row["protocol"] == "universality":
        return "universality"
    if row["protocol"] == "crowding":
        return "crowding"
    return "accuracy" if row["metric"] in ("accuracy", "error") else "other"


SECTION_TITLES = {"accuracy": "Accuracy (%)", "crowding": "Crowding of the classes",
                  "universality": "σ universality", "other": "Other measures"}


def _column_label(row, section, varying):
    """The header of one setting's column within a section. ``varying`` maps "classifier" and
    "queries" to the protocols whose columns differ in that field: only then is it named; and
    "settings" to whether the columns differ in suite, episodes or seed: then they are named."""
    parts = [str(row["axis"])] if pd.notna(row["axis"]) else []
    if section == "accuracy":
        if row["protocol"] == "fewshot":
            parts.append(f"{row['ways']}-way {row['shots']}-shot")
        else:
            parts.append(PROTOCOL_NAMES.get(row["protocol"], str(row["protocol"])))
        if row["metric"] == "error":
            parts.append("error")
        if row["protocol"] in varying["classifier"] and pd.notna(row["classifier"]):
            parts.append(str(row["classifier"]))
        if row["protocol"] in varying["queries"] and pd.notna(row["queries"]):
            parts.append(setting_name("queries", row["queries"]))
    elif section in ("crowding", "other"):
        parts.append(metric_name(row["metric"]))
    elif section == "universality" and row["metric"] != "sigma":
        parts.append(metric_name(row["metric"]))
    label = parts[0] + ": " + " ".join(parts[1:]) if len(parts) > 1 else " ".join(parts)
    if varying["settings"]:
        how = [setting_name(field, row[field]) for field in SETTINGS if pd.notna(row[field])]
        label += f" ({', '.join(how)})"
    return label


def _format(value, ci95, metric):
    digits = 2 if metric in ("accuracy", "error") else 3
    text = f"{value:.{digits}f}"
    return text + (f" ± {ci95:.{digits}f}" if pd.notna(ci95) else "")


def _axis_rank(axis):
    return (AXES.index(axis) if axis in AXES else len(AXES) + (axis == "overall"), str(axis))


def _metric_rank(metric):
    order = list(METRIC_NAMES)
    return (order.index(metric) if metric in order else len(order), str(metric))


def wide_tables(df):
    """The report's tables: one per section and (dataset, split), models as rows, settings as columns.

    Returns a list of ``(title, cells, best)``: ``cells`` a DataFrame of strings (columns ``base``,
    ``variant``, ``model``, then one per setting, "mean ± ci95" or "" where a model has no value),
    ``best`` a boolean DataFrame of the same shape marking the best cell of each setting column.
    """
    df = mark_best(df)
    df["section"] = df.apply(section_of, axis=1)
    order = model_order(df)
    tables = []
    for section in SECTION_TITLES:
        part = df[df["section"] == section]
        for (dataset, split), rows in part.groupby(["dataset", "split"], dropna=False, sort=True):
            columns = rows.drop_duplicates(SETTING).copy()
            varying = {field: {protocol for protocol, values in columns.groupby("protocol")[field]
                               if values.nunique(dropna=False) > 1}
                       for field in ("classifier", "queries")}
            varying["settings"] = len(columns[SETTINGS].drop_duplicates()) > 1
            columns["label"] = columns.apply(_column_label, axis=1, args=(section, varying))
            columns["_axis"] = columns["axis"].map(_axis_rank)
            columns["_metric"] = columns["metric"].map(_metric_rank)
            columns = columns.sort_values(["_axis", "protocol", "_metric", "ways", "shots",
                                           "classifier", "queries", "seed", "suite", "episodes"],
                                          kind="stable")
            labels = list(dict.fromkeys(columns["label"]))
            rows = rows.merge(columns[SETTING + ["label"]], on=SETTING, how="left")
            rows["cell"] = [_format(v, c, m) for v, c, m in
                            zip(rows["value"], rows["ci95"], rows["metric"])]
            models = [m for m in order if m in set(rows["model"])]
            cells = rows.pivot_table(index="model", columns="label", values="cell",
                                     aggfunc="first").reindex(index=models, columns=labels)
            best = rows.pivot_table(index="model", columns="label", values="best",
                                    aggfunc="max").reindex(index=models, columns=labels)
            info = rows.drop_duplicates("model").set_index("model").loc[models, ["base", "variant"]]
            cells = pd.concat([info, cells.fillna("")], axis=1).reset_index()
            best = pd.concat([info.assign(base=False, variant=False),
                              best.astype("boolean").fillna(False).astype(bool)],
                             axis=1).reset_index().assign(model=False)
            front = ["base", "variant", "model"]
            cells, best = (t[front + labels] for t in (cells, best))
            where = f"{dataset} ({split} split)" if pd.notna(split) else str(dataset)
            tables.append((f"{SECTION_TITLES[section]}, {where}", cells, best))
    return tables


def grouped_rows(cells):
    """Rows of ``cells`` with a base shown only on the first row of its group."""
    shown = cells.copy()
    repeat = shown["base"].eq(shown["base"].shift())
    shown.loc[repeat, "base"] = ""
    return shown


def to_markdown(title, cells, best):
    """A Markdown table, best cells in bold, each base named once above its variants."""
    shown = grouped_rows(cells)
    marked = shown.mask(best.to_numpy() & shown.ne("").to_numpy(), "**" + shown + "**")
    lines = [f"### {title}", "", "| " + " | ".join(marked.columns) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (marked.shape[1] - 3)) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in marked.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def default_pairs(df, notes):
    """Each +DSA / +GeSSL (any non-plain) model against the plain model of its base and backbone."""
    models = df.drop_duplicates("model")
    pairs = []
    for row in models.itertuples():
        if row.variant in ("plain", "?", *REFERENCES):
            continue
        plain = models[(models["base"] == row.base) & (models["backbone"] == row.backbone)
                       & (models["variant"] == "plain")]["model"].tolist()
        if len(plain) == 1:
            pairs.append((row.model, plain[0]))
        elif len(plain) > 1:
            notes.add(f"{row.model}: several plain {row.base} runs ({', '.join(plain)}); "
                      f"choose its pair with --pair {row.model} PLAIN_RUN")
    return pairs


def paired_differences(episodes, pairs, notes):
    """Mean paired difference A - B (accuracy points) +- 1.96 s / sqrt(n) over shared episodes.

    ``episodes`` is `analysis.load.load_episodes`'s mapping, ``pairs`` a list of (model A, model B).
    One row per pair and episode setting both models were scored on; a pair with none is noted.
    """
    rows = []
    for a, b in pairs:
        settings_a = {s: acc for (model, s), acc in episodes.items() if model == a}
        settings_b = {s: acc for (model, s), acc in episodes.items() if model == b}
        found = paired(settings_a, settings_b)
        if not found:
            notes.add(f"{a} vs {b}: no episodes scored on both (each needs an episodes.npz from "
                      f"`python -m gessl.evaluate` with the same seed and settings); no paired "
                      f"difference")
        for setting, stats in found:
            fields = dict(setting)
            rows.append({"model_a": a, "model_b": b, **{f: fields.get(f) for f in EPISODE_SETTING}, **stats})
    table = pd.DataFrame(rows, columns=["model_a", "model_b", *EPISODE_SETTING, "n", "mean_a",
                                        "mean_b", "difference", "ci95"])
    for column in ("ways", "shots", "queries", "episodes", "seed"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table.sort_values(["dataset", "axis", "model_a", "model_b", "shots"], kind="stable",
                             ignore_index=True)


def paired_markdown(table):
    """The paired differences as a Markdown table (a difference whose interval excludes 0 in bold)."""
    lines = ["### Paired differences (accuracy points, A − B, same episodes)", "",
             "| A | B | setting | A (%) | B (%) | A − B | episodes |", "|---|---|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        text = f"{r.difference:+.2f} ± {r.ci95:.2f}"
        if abs(r.difference) > r.ci95:
            text = f"**{text}**"
        setting = f"{r.dataset} {r.axis}: {r.ways}-way {r.shots}-shot"
        lines.append(f"| {r.model_a} | {r.model_b} | {setting} | {r.mean_a:.2f} | {r.mean_b:.2f} "
                     f"| {text} | {r.n} |")
    return "\n".join(lines) + "\n"
