"""Read what run folders hold into pandas: results, configs, training logs, feature samples, episodes.

A run folder (written by ``gessl.train`` and ``gessl.evaluate``) holds ``config.yaml``,
``metrics.jsonl``, ``results.jsonl``, and from ``gessl.evaluate`` ``feature_sample.npz`` and
``episodes.npz``. Every reader here turns a missing or unreadable optional file into a note (a line
for the report) instead of an error; only the results themselves are required.

Models: each record's ``run`` names a model, and a model is one run name in one folder: runs of
the same name in other folders (``lr-0.001/simclr-conv4-seed0``, ``lr-0.01/simclr-conv4-seed0``)
are other models, named by their folder's path from the folders' common parent. Records measured
under other settings (``suite``, ``episodes``, ``seed``) are kept apart, never one replacing the
other. A model evaluated from a run folder with a ``config.yaml`` gets its ``base`` method, ``variant`` (``plain``, ``+DSA``, ``+GeSSL``,
``+DSA+GeSSL``: the regulariser and meta-optimiser on top of the base) and ``backbone``; the random
backbone that ``gessl.evaluate`` scores beside every run (``RUN (random init)``) gets the variant
``random init``, and the pixel baseline it scores on Lake's one-shot runs (``RUN (pixels: modified
Hausdorff)``) the variant ``pixels``. References of one kind that scored exactly alike in several
folders are one model, shown once as ``random init (BACKBONE)`` or ``pixels: modified Hausdorff``.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tasks.common.errors import UserError
from tasks.common.io import read_jsonl, read_text
from tasks.evaluation.suite import PIXELS_SUFFIX, RANDOM_SUFFIX

KEY = ["run", "dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
       "metric"]
REQUIRED = KEY + ["value", "ci95", "time"]
SETTINGS = ["suite", "episodes", "seed"]  # how a measure was taken: results under others are kept apart
COLUMNS = KEY + ["value", "ci95", "episodes", "seed", "suite", "version", "time"]
INTEGER_COLUMNS = ["ways", "shots", "queries", "episodes", "seed"]
MODEL_COLUMNS = ["model", "base", "variant", "backbone"]
RANDOM_VARIANT = "random init"
PIXELS_VARIANT = "pixels"
REFERENCES = {RANDOM_VARIANT: "random init ({})", PIXELS_VARIANT: "pixels: modified Hausdorff"}  # model names
VARIANT_NAMES = {"dsa": "DSA", "gessl": "GeSSL"}


class Notes(list):
    """The report's notes: what was skipped and why, one line each, in the order they arose."""

    def add(self, message):
        if message not in self:
            self.append(message)


def find_results(paths):
    """Every ``results.jsonl`` at or under ``paths``, in a stable order, each file once."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist")
        found = [path] if path.is_file() else sorted(path.rglob("results.jsonl"))
        if not found:
            raise UserError(f"no results.jsonl under {path}; "
                            f"run `python -m gessl.evaluate RUN_DIR` first")
        files += [f for f in found if f.resolve() not in {g.resolve() for g in files}]
    return files


def _read_one(file, notes):
    """The valid records of one results.jsonl as a DataFrame; bad lines are skipped with a note."""
    records = []
    for number, line in enumerate(read_text(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            notes.add(f"{file}:{number}: skipped, not a JSON object")
    if not records:
        raise UserError(f"{file}: no valid records")
    df = pd.DataFrame.from_records(records)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{file}: records lack required field(s) {', '.join(missing)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["ci95"] = pd.to_numeric(df["ci95"], errors="coerce")
    df["_time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601", errors="coerce")
    ci95 = df["ci95"].astype(float)
    valid = (np.isfinite(df["value"].astype(float)) & (ci95.isna() | (np.isfinite(ci95) & (ci95 >= 0)))
             & df["_time"].notna() & df["run"].notna() & df["metric"].notna())
    if not valid.any():
        raise UserError(f"{file}: no valid records (each needs run, metric, a finite value, an interval "
                        f"(ci95) that is empty or finite and not negative, and an ISO-8601 time)")
    if not valid.all():
        notes.add(f"{file}: skipped {(~valid).sum()} record(s) without run, metric, a finite value, a "
                  f"finite interval that is not negative or an ISO-8601 time")
    df = df[valid].copy()
    df["folder"] = str(file.parent)
    return df


def _as_integers(column):
    numbers = pd.to_numeric(column, errors="coerce")
    if (numbers.dropna() % 1 != 0).any():
        raise UserError(f"field {column.name!r} holds non-integer values")
    return numbers.astype("Int64")


def read_config(folder, notes):
    """The run's ``config.yaml`` as a dict, or None with a note when it is missing or unreadable."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        notes.add(f"{folder}: no config.yaml, so its variant is unknown; listed under its run name")
        return None
    try:
        config = yaml.safe_load(read_text(path))
    except (yaml.YAMLError, UserError):
        config = None
    if not isinstance(config, dict):
        notes.add(f"{path}: not a YAML mapping in UTF-8 text; the run is listed under its run name")
        return None
    return config


def variant_name(config):
    """``plain``, ``+DSA``, ``+GeSSL`` or ``+DSA+GeSSL`` (any other names shown as written)."""
    extras = [config.get(name, "none") for name in ("reg", "meta")]
    extras = [VARIANT_NAMES.get(str(e), str(e)) for e in extras if e not in (None, "none")]
    return "+" + "+".join(extras) if extras else "plain"


def variant_rank(variant):
    """Sort order of variants: plain, +regulariser, +meta-optimiser, both, unknown, random init."""
    if variant == "plain":
        return 0
    if variant == RANDOM_VARIANT:
        return 9
    if variant == PIXELS_VARIANT:
        return 10
    if variant == "?":
        return 8
    parts = variant.strip("+").split("+")
    return 3 if len(parts) > 1 else (2 if parts[0] == "GeSSL" else 1)


def model_names(pairs):
    """``{(folder, run): model name}``: the run name, or where other folders hold a run of that name,
    the run name under the path of its folder's parent from the common parent of those folders."""
    folders = {}
    for folder, run in pairs:
        folders.setdefault(run, set()).add(folder)
    names = {}
    for folder, run in pairs:
        if len(folders[run]) == 1:
            names[folder, run] = str(run)
            continue
        parent = Path(folder).relative_to(Path(os.path.commonpath(sorted(folders[run])))).parent
        names[folder, run] = str(run) if parent == Path(".") else f"{parent.as_posix()}/{run}"
    return names


def _describe_models(df, notes):
    """Add ``model``, ``base``, ``variant`` and ``backbone`` columns from each folder's config."""
    configs = {folder: read_config(folder, notes) for folder in df["folder"].unique()}
    names = model_names(set(zip(df["folder"], df["run"])))
    info = []
    for run, folder in zip(df["run"], df["folder"]):
        config = configs[folder] or {}
        backbone = str(config.get("backbone", "?"))
        model = names[folder, run]
        if str(run).endswith(RANDOM_SUFFIX):
            info.append((model, "random", RANDOM_VARIANT, backbone))
        elif str(run).endswith(PIXELS_SUFFIX):
            info.append((model, "pixels", PIXELS_VARIANT, "none"))
        elif config:
            info.append((model, str(config.get("base", "?")), variant_name(config), backbone))
        else:
            info.append((model, "?", "?", backbone))
    df[MODEL_COLUMNS] = pd.DataFrame(info, index=df.index, columns=MODEL_COLUMNS)
    return _merge_references(df)


def _merge_references(df):
    """References of one kind (random backbones of one backbone, the pixel baseline) that scored
    exactly alike in every record become one model.

    Adds ``sources``: every (run folder, run name) a model's records came from, so the files
    beside them (feature samples, per-episode accuracies) are found under any of its names; the
    ``run`` of a merged model lists its run names.
    """
    references = df[df["variant"].isin(list(REFERENCES))]
    setting = [c for c in KEY if c != "run"] + SETTINGS
    for (variant, backbone), rows in references.groupby(["variant", "backbone"]):
        prints = {model: tuple(sorted(map(str, g[setting + ["value", "ci95"]].itertuples(index=False))))
                  for model, g in rows.groupby("model")}
        if len(prints) > 1 and len(set(prints.values())) == 1:
            df.loc[rows.index, "model"] = REFERENCES[variant].format(backbone)
    sources = {model: tuple(sorted(set(zip(rows["folder"], rows["run"]))))
               for model, rows in df.groupby("model")}
    df["sources"] = df["model"].map(sources)
    merged = df["model"] != df["run"]
    df.loc[merged, "run"] = df.loc[merged, "sources"].map(lambda s: "; ".join(sorted({r for _, r in s})))
    return df.drop_duplicates(["model"] + setting, keep="last")


def load_results(paths, notes=None):
    """Read every results.jsonl at or under ``paths`` into one tidy DataFrame, latest record wins.

    Columns: the record fields, ``folder`` (the run folder) and the model columns of
    `_describe_models`. "Latest" is per model and setting (``KEY`` and ``SETTINGS``). Raises UserError for a path that does not exist, a path with no
    results.jsonl under it, and a file with no valid records or without the required fields.
    """
    notes = Notes() if notes is None else notes
    df = pd.concat([_read_one(f, notes) for f in find_results(paths)], ignore_index=True)
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = pd.NA
    for column in INTEGER_COLUMNS:
        df[column] = _as_integers(df[column])
    df = df.sort_values("_time", kind="stable").drop_duplicates(KEY + SETTINGS + ["folder"], keep="last")
    df = _describe_models(df, notes)
    df["_rank"] = df["variant"].map(variant_rank)
    df = df.sort_values(["dataset", "split", "axis", "protocol", "classifier", "metric", "ways",
                         "shots", "_rank", "base", "model"], kind="stable")
    extra = [c for c in df.columns if c not in COLUMNS + MODEL_COLUMNS + ["folder", "sources"]
             and not c.startswith("_")]
    return df[MODEL_COLUMNS + COLUMNS + extra + ["folder", "sources"]].reset_index(drop=True)


def model_order(df):
    """Models grouped by base (references, random backbones and pixels, last), variants in `variant_rank` order."""
    models = df.drop_duplicates("model")[["model", "base", "variant"]]
    models = models.assign(_random=models["variant"].isin(list(REFERENCES)),
                           _rank=models["variant"].map(variant_rank))
    return models.sort_values(["_random", "base", "_rank", "model"])["model"].tolist()


def load_metrics(df, notes):
    """The training logs (``metrics.jsonl``) of the trained models as one long DataFrame.

    Columns: ``model``, ``step``, ``quantity``, ``value``; one row per logged number.
    """
    frames = []
    trained = df[~df["variant"].isin(list(REFERENCES))].drop_duplicates("model")
    for model, folder in zip(trained["model"], trained["folder"]):
        path = Path(folder) / "metrics.jsonl"
        try:
            records = read_jsonl(path) if path.is_file() else []
        except UserError as exc:
            notes.add(f"{model}: {exc}; no training curves")
            continue
        records = [r for r in records if isinstance(r.get("step"), (int, float))]
        if not records:
            notes.add(f"{model}: no training log ({path} missing or empty); no training curves")
            continue
        log = pd.DataFrame.from_records(records).drop_duplicates("step", keep="last")
        numeric = log.drop(columns="step").apply(pd.to_numeric, errors="coerce")
        long = numeric.assign(step=log["step"]).melt(id_vars="step", var_name="quantity")
        frames.append(long.dropna(subset=["value"]).assign(model=model))
    if not frames:
        return pd.DataFrame(columns=["model", "step", "quantity", "value"])
    return pd.concat(frames, ignore_index=True)[["model", "step", "quantity", "value"]]


def _load_npz(path, notes, what):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        notes.add(f"{path}: unreadable, so no {what} from it")
        return None


def _files_of_models(df, name, notes, what):
    """For each model, the ``name`` npz files of its source folders: model -> [(run, data)]."""
    loaded, found = {}, {}
    for model, sources in df.drop_duplicates("model")[["model", "sources"]].itertuples(index=False):
        for folder, run in sources:
            if folder not in loaded:
                loaded[folder] = _load_npz(Path(folder) / name, notes, what)
            if loaded[folder] is not None:
                found.setdefault(model, []).append((run, loaded[folder]))
    return found


def load_feature_samples(df, notes):
    """``{model: (features [n, D] float32, labels [n], index [n])}`` from ``feature_sample.npz``."""
    samples = {}
    for model, files in _files_of_models(df, "feature_sample.npz", notes, "feature map").items():
        for run, data in files:
            if not {"features", "models", "labels", "index"} <= data.keys():
                continue
            for name, features in zip(data["models"].tolist(), data["features"]):
                if name == run and model not in samples:
                    samples[model] = (features, data["labels"], data["index"])
    return samples


def load_episodes(df, notes):
    """Per-episode accuracies from ``episodes.npz`` as ``{(model, setting): accuracies}``.

    ``setting`` is the tuple of (field, value) of every episode field but ``run`` (including the
    labels digest), so two entries with the same setting were scored on the same episodes.
    """
    episodes = {}
    for model, files in _files_of_models(df, "episodes.npz", notes, "paired differences").items():
        for run, data in files:
            fields = data["fields"].tolist() if "fields" in data else []
            if "run" not in fields:
                continue
            for name, values in data.items():
                parts = name.split("/")
                if name == "fields" or len(parts) != len(fields):
                    continue
                entry = dict(zip(fields, parts))
                if entry.pop("run") == run:
                    episodes.setdefault((model, tuple(sorted(entry.items()))),
                                        np.asarray(values, dtype=np.float64))
    return episodes
