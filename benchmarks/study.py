"""A study that outlives a session: one declared grid of training runs, run cell by cell, resumable.

``python benchmarks/study.py GRID.yaml`` runs every cell of the grid the file declares (see
``benchmarks/grids/*.yaml``)::

    name: diagnosis                       # the study's name
    runs: runs/study/diagnosis            # where the cells' run folders go (not committed)
    results: benchmarks/results/diagnosis # where the summaries go (committed)
    datasets: [glyphs]                    # training sets (--dataset)
    seeds: [0, 1, 2]                      # training seeds (--seed)
    budgets: [{steps: 191}, {minutes: 10}]  # per cell: a number of steps, or of minutes of training
    common: --reg none                    # gessl.train flags of every cell
    evaluate: --suite quick --episodes 600  # gessl.evaluate flags of every cell
    reference: simclr                     # the variant every other one is compared with
    random: true                          # also each variant against its random backbone (default false)
    variants:                             # name: gessl.train flags (after common)
      simclr: --meta none
      gessl: ""
    curve: {minutes: [5, 10], targets: [omniglot-lake]}  # optional: points of a time-to-accuracy curve

A cell is (dataset, budget, variant, seed); its run folder is
``RUNS/DATASET-BUDGET/VARIANT-seedSEED``. Cells run one after another: ``python -m gessl.train``
(``--max-steps`` the budget's steps, its learning-rate schedule ending there; ``--resume`` when a
stopped cell left a checkpoint), then ``python -m gessl.evaluate``, both in this process. A finished
cell is recorded in ``RESULTS/cells.jsonl`` (its steps, training seconds, or the one-line reason
``gessl.train`` refused it) and its evaluation is kept in two files of the grid, compactly:
``RESULTS/episode_counts.npz`` (compressed) holds every kept cell's per-episode answers, the correct
(Lake's runs: wrong) answers of each episode of ``ways × queries``, from which ``gessl.evaluate``'s
accuracies (%) come back bit for bit, and ``RESULTS/evaluations.jsonl.xz`` holds each cell's
``config.yaml`` and ``results.jsonl`` (one line per cell: ``cell``, ``config``, ``results``; read
with ``xzcat``). Both are committed with the summaries, so the study outlives the run folders: a
rerun, in this checkout or a fresh one, skips recorded cells and reruns any other, so a killed cell
runs again (from its checkpoint, or afresh when it had none) and the grid can grow across sessions.
A budget in minutes becomes steps by timing ``--calibration-steps`` steps of the variant on this
machine (``seconds_per_step``: the time between the backbones a ``gessl.train`` run of twice that many
steps keeps after each half), every variant of the (dataset, budget) back to back when its
first cell starts, so they are timed under the same load; the steps chosen are recorded in
``RESULTS/calibration.json`` and reused by every rerun.

A variant whose flags ``gessl.train`` does not take (an option it lacks) is not run and not
recorded: the runner names it and ends with a one-line error (exit 2), and a rerun runs it once
``gessl.train`` takes its flags. A refusal of ``gessl.train`` past its flags (a setting it cannot
train) is recorded, and the cell is not run again.

With ``curve`` (budgets in minutes only), every cell also keeps its backbone at the curve's minutes of
its steps: ``--ckpt-every`` the first point's steps, each point's checkpoint copied (``config.yaml``,
``backbone.pt``) to the run folder of a point cell of the budget ``BUDGET-atMmin``, all in one
uninterrupted ``gessl.train`` run whose learning-rate schedule spans the cell's steps. After training,
each point is evaluated like the cell, kept, and recorded in ``cells.jsonl`` (``point_of``: the
cell's folder), so the summaries hold a table per point, paired as any cell, and the runner draws the
accuracy of every variant against the minutes of training (``fig_curve``) into ``RESULTS/curve.png``
and ``.pdf``, for the 1-shot settings of the curve's ``targets`` (all when none are named).

Several runners may work on one grid at once (``python benchmarks/study.py GRID.yaml`` started once
per free core, each with ``OMP_NUM_THREADS=1``): a runner claims a cell with a lock file beside its
run folder (``RUNS/DATASET-BUDGET/VARIANT-seedSEED.lock``) and passes over cells another runner
holds; records, summaries and calibrations are written under the lock ``RESULTS/.lock``. The locks
are ``flock``s, which the kernel drops when their runner ends, so a killed runner leaves its cell to
the next.

Summaries (``RESULTS/summary.json``, ``summary.md`` and the per-seed rows, one line per cell,
setting and comparison; compressed: ``per_seed.jsonl.xz``) are the paired differences variant −
reference on identical episodes: each kept cell's ``episodes.npz`` is rebuilt from
``episode_counts.npz`` in a temporary folder and read by ``gessl.paired_differences``: per
seed, the mean difference ± 1.96 s/√n over episodes (Lake's runs: over the 20 runs); across seeds,
the mean of the per-seed differences ± t₀.₉₇₅(n−1) s/√n over seeds. With ``random: true`` they also
hold each variant − its run's random backbone (scored by ``gessl.evaluate`` on the same episodes,
``gessl.random_differences``), and the runner ends with a one-line error (exit 2) naming
every variant and setting whose mean is not above it: the check that each base method learns
something. ``--summarise`` rewrites them from the cells recorded so far, training nothing; ``--against VARIANT``
prints the same tables with VARIANT as the reference (GeSSL's variants against each other, say),
writing nothing.
``summary.md`` opens with one table per training set and budget of every variant's 1-shot accuracies
and differences, its steps and minutes of training; the runner ends by drawing the differences over
seeds (``analysis.figures.fig_study``) into ``RESULTS/differences.png`` and ``.pdf``.
"""
import argparse
import collections
import contextlib
import io
import json
import lzma
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.stats
import seaborn as sns
import yaml

from analysis import figures
from gessl import EPISODE_FIELDS, config_from_flags, evaluate, paired_differences, random_differences, train
from tasks.common.errors import UserError, run_cli
from tasks.common.io import (append_jsonl, atomic_write_bytes, atomic_write_text, locked, read_jsonl, read_npz,
                             try_lock, write_npz)

KEYS = {"name", "runs", "results", "datasets", "seeds", "budgets", "common", "evaluate", "reference", "random",
        "variants", "curve"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    budget: str   # "191steps" or "10min"
    variant: str
    seed: int

    def folder(self, runs):
        return Path(runs) / f"{self.dataset}-{self.budget}" / f"{self.variant}-seed{self.seed}"


def read_grid(path):
    """The grid of a YAML file, checked (``UserError`` on a missing file, unknown key or bad budget)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file {path} does not exist")
    try:
        grid = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"grid file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(grid, dict) or not KEYS >= set(grid) or "variants" not in grid:
        raise UserError(f"grid file {path} must be a mapping with 'variants' and only these keys: {sorted(KEYS)}")
    grid = {"common": "", "evaluate": "--suite quick", "datasets": ["glyphs"], "seeds": [0], "random": False,
            "budgets": [{"steps": 191}], "runs": f"runs/study/{grid.get('name', path.stem)}",
            "results": f"benchmarks/results/{grid.get('name', path.stem)}", **grid}
    grid["variants"] = {name: flags or "" for name, flags in grid["variants"].items()}
    grid.setdefault("reference", next(iter(grid["variants"])))
    if grid["reference"] not in grid["variants"]:
        raise UserError(f"grid file {path}: reference {grid['reference']!r} is not one of the variants")
    for budget in grid["budgets"]:
        if not (isinstance(budget, dict) and len(budget) == 1 and set(budget) <= {"steps", "minutes"}
                and budget[next(iter(budget))] > 0):
            raise UserError(f"grid file {path}: a budget is {{steps: N}} or {{minutes: M}}, positive; got {budget!r}")
    if "curve" in grid:
        curve = grid["curve"]
        minutes = curve.get("minutes") if isinstance(curve, dict) and set(curve) <= {"minutes", "targets"} else None
        if not (isinstance(minutes, list) and minutes and all(isinstance(m, (int, float)) and m > 0 for m in minutes)
                and all(abs(m / minutes[0] - round(m / minutes[0])) < 1e-9 for m in minutes)
                and all(max(minutes) < b.get("minutes", 0) for b in grid["budgets"])):
            raise UserError(f"grid file {path}: curve is {{minutes: [M1, M2, ...], targets: [DATASET, ...]}}, each "
                            f"minute a multiple of the first and below every budget, which are all in minutes; "
                            f"got {curve!r}")
        grid["curve"] = {"targets": [], **curve}
    return grid


def budget_label(budget):
    (kind, amount), = budget.items()
    return f"{amount:g}{'steps' if kind == 'steps' else 'min'}"


def cells(grid):
    """Every cell of the grid, in run order: dataset, budget, seed, then variant (the reference first)."""
    names = [grid["reference"]] + [v for v in grid["variants"] if v != grid["reference"]]
    return [Cell(d, budget_label(b), v, s) for d in grid["datasets"] for b in grid["budgets"]
            for s in grid["seeds"] for v in names]


def curve_points(grid, cell, steps):
    """``{step: point cell}`` of the cell's time-to-accuracy curve (grid key ``curve``): at each of its
    minutes M, the step ``round(M / M1) · ⌊steps · M1 / budget minutes⌋`` (M1 the first), a multiple of
    the first point's, so checkpoints every first-point steps reach them all (points at or past the
    cell's steps are left out); the point is the cell of the budget ``BUDGET-atMmin`` (its folder
    ``RUNS/DATASET-BUDGET-atMmin/VARIANT-seedSEED``)."""
    if "curve" not in grid:
        return {}
    minutes = grid["curve"]["minutes"]
    budget = next(b for b in grid["budgets"] if budget_label(b) == cell.budget)
    unit = max(1, int(steps * minutes[0] / budget["minutes"]))
    points = {unit * round(m / minutes[0]): f"{cell.budget}-at{m:g}min" for m in minutes}
    return {step: Cell(cell.dataset, label, cell.variant, cell.seed) for step, label in points.items() if step < steps}


def kept_backbone(run, step):
    """The backbone ``gessl.train --keep-backbones`` keeps at ``step`` in ``run`` (docs/run_folders.md)."""
    return run / "backbones" / f"step-{step}.pt"


def keep_points(run, points, started, seconds_per_step):
    """Each point of ``points`` (``{step: folder}``) as a run folder ``gessl.evaluate`` scores: the run's
    ``config.yaml`` and the backbone ``gessl.train --keep-backbones`` kept at that step; ``{step: training
    seconds}``, from when the kept file was written (``started`` the training's start; a point kept by an
    earlier, stopped process gets its share of ``seconds``, the whole training's)."""
    at = {}
    for step, folder in points.items():
        kept = kept_backbone(run, step)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "config.yaml", folder / "config.yaml")
        shutil.copyfile(kept, folder / "backbone.pt")
        written = kept.stat().st_mtime - started
        at[step] = written if written >= 0 else step * seconds_per_step
    return at


def flags_refusal(flags):
    """``None`` when ``gessl.train`` takes ``flags``, else its one-line complaint (an unknown option);
    a value it refuses is no flag refusal: training the cell records it."""
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            config_from_flags(flags)
    except SystemExit:
        return complaint.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
    except UserError:
        pass
    return None


def cell_flags(grid, cell):
    """The ``gessl.train`` flags of a cell, without its step count and folder."""
    return [*shlex.split(grid["common"]), *shlex.split(grid["variants"][cell.variant]),
            "--dataset", cell.dataset, "--seed", str(cell.seed), "--eval-episodes", "0"]


def seconds_per_step(flags, steps):
    """Seconds of a training step of ``flags``: one ``gessl.train`` run of 2 × ``steps`` steps in a scratch
    folder, keeping its backbone every ``steps`` steps (``--keep-backbones``); the time between the two
    kept files over ``steps``. Start-up, data loading and the first ``steps`` steps (the warm-up) are left
    out; the writing of one checkpoint is in."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        train.main([*flags, "--max-steps", str(2 * steps), "--epochs", "1000000", "--log-every", "1000000",
                    "--ckpt-every", str(steps), "--keep-backbones", "--out", str(out)])
        written = [kept_backbone(out, n).stat().st_mtime for n in (steps, 2 * steps)]
    return (written[1] - written[0]) / steps


def steps_of(grid, cell, calibration_steps):
    """The cell's training steps: the budget's, or its minutes over the calibrated seconds per step,
    kept in ``RESULTS/calibration.json``. The first cell of a (dataset, budget) that needs a
    calibration times every variant of the grid there that has none, back to back, so the variants
    compared at equal wall-clock are timed under the same load."""
    budget = next(b for b in grid["budgets"] if budget_label(b) == cell.budget)
    if "steps" in budget:
        return int(budget["steps"])
    path = Path(grid["results"]) / "calibration.json"
    key = f"{cell.dataset}/{cell.budget}/{{}}"
    with locked(results_lock(grid)):
        table = json.loads(path.read_text()) if path.is_file() else {}
        for variant in grid["variants"]:
            if key.format(variant) not in table and not flags_refusal(shlex.split(grid["variants"][variant])):
                print(f"study {grid['name']}: timing {calibration_steps} steps of {variant} on {cell.dataset}",
                      flush=True)
                flags = cell_flags(grid, Cell(cell.dataset, cell.budget, variant, cell.seed))
                seconds = seconds_per_step(flags, calibration_steps)
                table[key.format(variant)] = {"seconds_per_step": seconds,
                                              "steps": max(1, int(budget["minutes"] * 60 / seconds))}
                atomic_write_text(path, json.dumps(table, indent=2))
        return table[key.format(cell.variant)]["steps"]


def results_lock(grid):
    """The lock file that guards the grid's records, summaries and calibrations (``RESULTS/.lock``)."""
    Path(grid["results"]).mkdir(parents=True, exist_ok=True)
    return Path(grid["results"]) / ".lock"


def finished(grid):
    """The cells recorded in ``RESULTS/cells.jsonl``: run folder → record."""
    path = Path(grid["results"]) / "cells.jsonl"
    return {r["folder"]: r for r in read_jsonl(path)} if path.is_file() else {}


STORE = "episode_counts.npz"          # every kept cell's per-episode answers, one compressed file
EVALUATIONS = "evaluations.jsonl.xz"  # every kept cell's config.yaml and results.jsonl, one line per cell
DECODE = {  # how a kind of stored count gives back gessl.evaluate's accuracy (%) of an episode of n answers
    "correct": lambda counts, n: 100 * (counts / n),         # few-shot episodes: 100 · mean(correct)
    "wrong": lambda counts, n: 100 - 100 * (counts / n),     # Lake's runs: 100 − error, error = 100 · mean(wrong)
}


def cell_name(grid, cell):
    """The cell's name in the kept results: ``DATASET-BUDGET/VARIANT-seedSEED``."""
    return cell.folder(grid["runs"]).relative_to(grid["runs"]).as_posix()


def answers(key):
    """The answers of an episode of the ``episodes.npz`` entry ``key``: ways × queries."""
    fields = dict(zip(EPISODE_FIELDS, key.split("/")))
    return int(fields["ways"]) * int(fields["queries"])


def encode(key, values):
    """``(kind, counts)`` whose ``DECODE`` gives ``values`` back exactly: the correct (or wrong) answers of
    each episode of ``ways × queries`` answers; ``("percent", values)`` where no count does."""
    n = answers(key)
    correct = np.rint(np.asarray(values, np.float64) * n / 100)
    for kind, counts in (("correct", correct), ("wrong", n - correct)):
        if np.array_equal(DECODE[kind](counts, n), values):
            return kind, counts.astype(np.uint16)
    return "percent", np.asarray(values, np.float64)


def read_store(grid):
    """``{cell name: {episodes.npz key: per-episode accuracies}}`` from ``RESULTS/episode_counts.npz``."""
    path = Path(grid["results"]) / STORE
    if not path.is_file():
        return {}
    z = read_npz(path, ["cells", "keys", "kinds", "lengths", "counts", "percents"])
    store, streams, at = {}, {"count": z["counts"], "percent": z["percents"]}, {"count": 0, "percent": 0}
    for cell, key, kind, length in zip(z["cells"], z["keys"], z["kinds"], z["lengths"]):
        stream = "percent" if kind == "percent" else "count"
        values = streams[stream][at[stream]:at[stream] + length]
        at[stream] += length
        if kind != "percent":
            values = DECODE[kind](values.astype(np.float64), answers(key))
        store.setdefault(str(cell), {})[str(key)] = values
    return store


def write_store(grid, store):
    """Write ``store`` (as ``read_store`` returns it) to ``RESULTS/episode_counts.npz``, compressed."""
    entries = [(cell, key, *encode(key, values)) for cell, accuracies in store.items()
               for key, values in accuracies.items()]
    counts = [c for *_, kind, c in entries if kind != "percent"]
    percents = [c for *_, kind, c in entries if kind == "percent"]
    counts = np.concatenate(counts) if counts else np.zeros(0, np.uint16)
    write_npz(Path(grid["results"]) / STORE, {
        "cells": np.array([e[0] for e in entries], dtype=str), "keys": np.array([e[1] for e in entries], dtype=str),
        "kinds": np.array([e[2] for e in entries], dtype=str),
        "lengths": np.array([len(e[3]) for e in entries], dtype=np.int64),
        "counts": counts.astype(np.uint8) if counts.size and counts.max() < 256 else counts,
        "percents": np.concatenate(percents) if percents else np.zeros(0)}, compressed=True)


def xz_lines(records):
    """The JSON lines of ``records``, xz-compressed."""
    return lzma.compress("".join(json.dumps(r) + "\n" for r in records).encode())


def read_evaluations(grid):
    """``{cell name: {"config": config.yaml's text, "results": results.jsonl's records}}``."""
    path = Path(grid["results"]) / EVALUATIONS
    if not path.is_file():
        return {}
    lines = lzma.decompress(path.read_bytes()).decode().splitlines()
    return {line["cell"]: line for line in map(json.loads, lines)}


def keep(grid, cell, folder):
    """Keep the evaluation of ``cell`` from its run ``folder`` (``episodes.npz``, ``config.yaml``,
    ``results.jsonl``) in the grid's two files: its episodes' answers in ``RESULTS/episode_counts.npz``,
    its config and records in ``RESULTS/evaluations.jsonl.xz``; what an earlier run of the cell kept
    is replaced. The caller holds the results lock."""
    name = cell_name(grid, cell)
    with np.load(folder / "episodes.npz", allow_pickle=False) as saved:
        accuracies = {key: saved[key] for key in saved.files if key != "fields"}
    write_store(grid, {**read_store(grid), name: accuracies})
    evaluations = {**read_evaluations(grid), name: {"cell": name, "config": (folder / "config.yaml").read_text(),
                                                    "results": read_jsonl(folder / "results.jsonl")}}
    atomic_write_bytes(Path(grid["results"]) / EVALUATIONS, xz_lines(evaluations.values()))


@contextlib.contextmanager
def episode_folders(grid, names):
    """Yield a temporary folder holding, for each cell name of ``names``, ``NAME/episodes.npz`` rebuilt
    from the kept answers (``gessl.evaluate``'s format, read by ``paired_differences``); a
    ``UserError`` names a recorded cell whose answers are not kept."""
    store = read_store(grid)
    missing = [name for name in names if name not in store]
    if missing:
        raise UserError(f"{Path(grid['results']) / STORE} keeps no episodes of the recorded cells {missing}; "
                        f"delete their lines from {Path(grid['results']) / 'cells.jsonl'} to run them again")
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            (Path(scratch) / name).mkdir(parents=True)
            np.savez(Path(scratch) / name / "episodes.npz", **store[name])
        yield Path(scratch)


def run_cell(grid, cell, calibration_steps):
    """Train (or resume) and evaluate one cell; its record (``refused`` when gessl.train refuses it).

    A ``UserError`` after the cell saved a checkpoint (stopped by SIGTERM or Ctrl-C, a full disk) is
    no refusal: it ends the study unrecorded, and the next run resumes the cell."""
    folder = cell.folder(grid["runs"])
    record = {"folder": str(folder), "dataset": cell.dataset, "budget": cell.budget, "variant": cell.variant,
              "seed": cell.seed}
    try:
        steps = steps_of(grid, cell, calibration_steps)
        points = curve_points(grid, cell, steps)
        args = [*cell_flags(grid, cell), "--max-steps", str(steps), "--epochs", "1000000", "--out", str(folder)]
        if points:
            args += ["--ckpt-every", str(min(points)), "--keep-backbones"]
        resume = (folder / "checkpoint.pt").is_file()
        if folder.exists() and not resume:  # killed before its first checkpoint: its log would be appended to
            shutil.rmtree(folder)
        started = time.time()
        train.main(args + (["--resume"] if resume else []))
        seconds = time.time() - started
        seconds_at = keep_points(folder, {step: p.folder(grid["runs"]) for step, p in points.items()}, started,
                                 seconds / steps)
        for run in [folder, *(p.folder(grid["runs"]) for p in points.values())]:
            evaluate.main([str(run), *shlex.split(grid["evaluate"])])
    except UserError as exc:
        if (folder / "checkpoint.pt").is_file():  # stopped (a signal, a full disk) mid-run: not a refusal
            raise
        return {**record, "refused": str(exc)}
    curve = [{"folder": str(p.folder(grid["runs"])), "dataset": p.dataset, "budget": p.budget, "variant": p.variant,
              "seed": p.seed, "steps": step, "train_seconds": seconds_at[step],
              "point_of": str(folder)}
             for step, p in points.items()]
    return {**record, "steps": steps, "train_seconds": seconds, "curve": curve}


def recorded_cells(grid, done):
    """The grid's cells, each followed by the curve points recorded of it (``curve_points``)."""
    points = {}
    for r in done.values():
        if "point_of" in r:
            points.setdefault(r["point_of"], []).append(Cell(r["dataset"], r["budget"], r["variant"], r["seed"]))
    return [c for cell in cells(grid) for c in [cell, *points.get(str(cell.folder(grid["runs"])), [])]]


def interval(values):
    """Mean and half-width t₀.₉₇₅(n−1) · s / √n of ``values`` (NaN width for one value)."""
    n = len(values)
    half = scipy.stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return float(np.mean(values)), float(half)


def summarise(grid, done):
    """Paired differences variant − reference per setting (see the module docstring); rows for JSON.
    With ``random: true`` in the grid, also every variant (the reference included) − its random backbone,
    as rows whose ``against`` is ``random``."""
    rows = []
    by_folder = {r["folder"]: r for r in done.values() if "refused" not in r}
    recorded = [cell for cell in recorded_cells(grid, done) if str(cell.folder(grid["runs"])) in by_folder]
    with episode_folders(grid, [cell_name(grid, cell) for cell in recorded]) as episodes:
        for cell in recorded:
            reference = Cell(cell.dataset, cell.budget, grid["reference"], cell.seed)
            run, against = episodes / cell_name(grid, cell), episodes / cell_name(grid, reference)
            pairs = []
            if cell.variant != grid["reference"] and str(reference.folder(grid["runs"])) in by_folder:
                pairs += [{"against": grid["reference"], **r} for r in paired_differences(run, against)]
            if grid["random"]:
                pairs += [{"against": "random", **r} for r in random_differences(run)]
            record = by_folder[str(cell.folder(grid["runs"]))]
            rows += [{"trained_on": cell.dataset, "budget": cell.budget, "variant": cell.variant,
                      "train_seed": cell.seed, "steps": record["steps"], "train_seconds": record["train_seconds"], **r}
                     for r in pairs]
    return rows


def across_seeds(rows):
    """Rows grouped by (what they are against, training set, budget, variant, setting), with the mean
    over seeds and intervals."""
    groups = {}
    for r in rows:
        setting = f"{r['axis']} {r['dataset']}: {r['ways']}-way {r['shots']}-shot"
        groups.setdefault((r["against"], r["trained_on"], r["budget"], r["variant"], setting), []).append(r)
    table = []
    for (against, dataset, budget, variant, setting), group in groups.items():
        diff, half = interval([g["difference"] for g in group])
        table.append({"against": against, "dataset": dataset, "budget": budget, "variant": variant,
                      "setting": setting, "seeds": len(group), "mean": float(np.mean([g["mean_a"] for g in group])),
                      "reference": float(np.mean([g["mean_b"] for g in group])), "difference": diff,
                      "ci95_seeds": half, "ci95_episodes": group[0]["ci95"] if len(group) == 1 else float("nan")})
    return table


def difference_text(row):
    """``+d ± h`` of a table row (the interval over seeds, or over episodes for one seed), bold when
    the interval excludes 0."""
    half = row["ci95_seeds"] if row["seeds"] > 1 else row["ci95_episodes"]
    text = f"{row['difference']:+.2f} ± {half:.2f}"
    return f"**{text}**" if abs(row["difference"]) > half else text


def short_settings(settings):
    """Column labels: ``axis dataset: W-way K-shot`` as ``dataset WwKs``, or as ``dataset (axis) WwKs``
    where two axes score one dataset (a model trained on the glyphs: held-out images, unseen classes)."""
    parts = []
    for setting in settings:
        axis, rest = setting.split(" ", 1)
        target, shape = rest.split(": ")
        parts.append((axis, target, "w".join(part.split("-")[0] for part in shape.split()) + "s"))
    counts = collections.Counter(target for _, target, _ in parts)
    return [f"{target} ({axis}) {shape}" if counts[target] > 1 else f"{target} {shape}" for axis, target, shape in parts]


def headline(grid, table, done):
    """Markdown lines: per training set and budget, one row per variant with its steps and training
    minutes (means over its recorded seeds) and, per 1-shot setting, its accuracy and its difference
    to the reference (the reference's row: its accuracy)."""
    lines = []
    for dataset, budget in dict.fromkeys((r["dataset"], r["budget"]) for r in table):
        rows = [r for r in table if (r["dataset"], r["budget"], r["against"]) == (dataset, budget, grid["reference"])
                and "1-shot" in r["setting"]]
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        if not settings:
            continue
        lines += ["", f"### Trained on {dataset}, {budget}", "",
                  "| variant | seeds | steps | minutes | " + " | ".join(short_settings(settings)) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(settings)]
        for variant in grid["variants"]:
            records = [r for r in done.values() if (r["dataset"], r["budget"], r["variant"]) == (dataset, budget, variant)
                       and "refused" not in r]
            if not records:
                continue
            cells_ = []
            for setting in settings:
                if variant == grid["reference"]:  # its mean over the most seeds any variant is paired on
                    match = max((r for r in rows if r["setting"] == setting), key=lambda r: r["seeds"], default=None)
                    cells_.append(f"{match['reference']:.1f}" if match else "")
                else:
                    match = [r for r in rows if r["setting"] == setting and r["variant"] == variant]
                    cells_.append(f"{match[0]['mean']:.1f} ({difference_text(match[0])})" if match else "")
            lines.append(f"| {variant} | {len(records)} | {np.mean([r['steps'] for r in records]):.0f} | "
                         f"{np.mean([r['train_seconds'] for r in records]) / 60:.1f} | " + " | ".join(cells_) + " |")
    return lines


def markdown(grid, table, done):
    lines = [f"# Study {grid['name']}: paired differences against {grid['reference']}"
             + (" and against each run's random backbone" if grid["random"] else ""), "",
             "Accuracy (%) of the variant and variant − reference on identical episodes "
             "(± 1.96 s/√n over episodes for one seed, ± t s/√n over seeds for several); "
             "bold: the interval excludes 0.", "", "## 1-shot settings at a glance",
             "", f"Accuracy (difference to {grid['reference']}); {grid['reference']}'s row: its accuracy. "
             "Steps and minutes of training: means over the recorded seeds.", *headline(grid, table, done)]
    for against in dict.fromkeys(r["against"] for r in table):
        name = "its random backbone" if against == "random" else against
        lines += ["", f"## Against {name}", "",
                  f"| training set | budget | variant | setting | seeds | variant (%) | {name} (%) | difference |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        for r in (r for r in table if r["against"] == against):
            lines.append(f"| {r['dataset']} | {r['budget']} | {r['variant']} | {r['setting']} | {r['seeds']} | "
                         f"{r['mean']:.2f} | {r['reference']:.2f} | {difference_text(r)} |")
    return "\n".join(lines) + "\n"


def below_random(table):
    """The (variant, setting, training set, budget) rows whose mean accuracy is not above their random
    backbone's."""
    return [(r["variant"], r["setting"], r["dataset"], r["budget"]) for r in table
            if r["against"] == "random" and r["difference"] <= 0]


def write_summaries(grid, done):
    rows = summarise(grid, done)
    table = across_seeds(rows)
    results = Path(grid["results"])
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "summary.json", json.dumps({"grid": grid, "cells": list(done.values()),
                                                             "table": table}, indent=2))
    atomic_write_bytes(results / "per_seed.jsonl.xz", xz_lines(rows))
    atomic_write_text(results / "summary.md", markdown(grid, table, done))
    return table


def budget_minutes(budget):
    """The minutes of training a budget label in minutes stands for: ``30min`` 30, a curve point's
    ``30min-at5min`` 5; ``None`` for a budget in steps."""
    last = budget.rsplit("-at", 1)[-1]
    return float(last[:-3]) if last.endswith("min") else None


def setting_target(setting):
    """The target data set a setting scores (``"generalization omniglot-lake: 20-way 1-shot"`` → omniglot-lake)."""
    return setting.split(" ")[1].rstrip(":")


def fig_curve(table, reference, targets=()):
    """Time-to-accuracy: per training set (rows) and target data set of ``targets`` (columns; all when
    empty), each variant's 1-shot accuracy (mean over seeds) against the minutes of training of the budgets
    in minutes and their curve points (``reference``'s from the rows against it); a target that a training
    set is not scored on (its own training data) leaves its panel blank, and one scored on two axes shows the
    first. ``None`` when there is none."""
    rows = [r for r in table if r["against"] == reference and "1-shot" in r["setting"]
            and budget_minutes(r["budget"]) is not None
            and (not targets or setting_target(r["setting"]) in targets)]
    if not rows:
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    columns = list(dict.fromkeys(setting_target(r["setting"]) for r in rows))
    variants = [reference] + list(dict.fromkeys(r["variant"] for r in rows))
    colors = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    fig = figures.new_figure(figures.WIDTH, 1.9 * len(datasets) + 0.7)
    axes = fig.subplots(len(datasets), len(columns), squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, target in enumerate(columns):
            ax = axes[i, j]
            here = [r for r in rows if r["dataset"] == dataset and setting_target(r["setting"]) == target]
            if not here:
                ax.axis("off")
                continue
            setting = here[0]["setting"]  # a target scored on two axes (the glyphs by glyph training): the first
            part = [r for r in here if r["setting"] == setting]
            curves = {v: sorted((budget_minutes(r["budget"]), r["mean"]) for r in part if r["variant"] == v)
                      for v in variants[1:]}
            curves[reference] = sorted({(budget_minutes(r["budget"]), r["reference"]) for r in part})
            for variant in variants:
                if curves[variant]:
                    x, y = zip(*curves[variant])
                    ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, color=colors[variant], label=variant)
            ax.set_title(f"{target} ({setting.split(' ')[0]})\n(trained on {dataset})", fontsize=7.5)
            ax.tick_params(labelsize=7)
            if i == len(datasets) - 1:
                ax.set_xlabel("minutes of training", fontsize=7.5)
            if j == 0:
                ax.set_ylabel("1-shot accuracy (%)", fontsize=7.5)
    handles, labels = next(ax for ax in axes.flat if ax.lines).get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(variants), fontsize=7.5, frameon=False)
    return fig


def write_figure(grid, table):
    """``RESULTS/differences.png`` and ``.pdf``: ``analysis.figures.fig_study`` of the table, curve points
    left out; with a ``curve`` in the grid, ``RESULTS/curve.png`` and ``.pdf``: ``fig_curve``."""
    figures.apply_theme()
    budgets = [r for r in table if "-at" not in r["budget"]]
    settings = list(dict.fromkeys(r["setting"] for r in budgets))
    made = figures.fig_study(budgets, grid["reference"], dict(zip(settings, short_settings(settings))).get)
    if made is not None:
        figures.save(made[0], Path(grid["results"]), "differences")
    curve = fig_curve(table, grid["reference"], grid["curve"]["targets"]) if "curve" in grid else None
    if curve is not None:
        figures.save(curve, Path(grid["results"]), "curve")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/study.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("grid", metavar="GRID.yaml", help="the grid file")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--summarise", action="store_true", help="only rewrite the summaries from the recorded cells")
    parser.add_argument("--calibration-steps", type=int, default=8, help="steps timed per variant (budgets in minutes)")
    only.add_argument("--against", metavar="VARIANT",
                      help="only print every variant's paired differences against VARIANT instead of the grid's "
                           "reference, from the recorded cells (nothing trained or written; every budget)")
    parser.add_argument("--budget", action="append", metavar="LABEL",
                        help="train only the cells of this budget (its label: 191steps, 10min, ...; repeatable); "
                             "the summaries still cover every recorded cell")
    args = parser.parse_args(argv)
    if args.against and args.budget:
        parser.error("--budget chooses cells to train and --against trains none: give one of them")
    grid = read_grid(args.grid)
    Path(grid["runs"]).mkdir(parents=True, exist_ok=True)
    unrunnable = []
    labels = {budget_label(b) for b in grid["budgets"]}
    if args.budget and not set(args.budget) <= labels:
        raise UserError(f"--budget {sorted(set(args.budget) - labels)} is not a budget of the grid: {sorted(labels)}")
    if args.against:
        if args.against not in grid["variants"]:
            raise UserError(f"--against {args.against!r} is not a variant of the grid: {sorted(grid['variants'])}")
        other = {**grid, "reference": args.against, "random": False}
        done = finished(grid)
        print(markdown(other, across_seeds(summarise(other, done)), done))
        return
    if not args.summarise:
        for cell in cells(grid):
            if args.budget and cell.budget not in args.budget:
                continue
            folder = cell.folder(grid["runs"])
            folder.parent.mkdir(parents=True, exist_ok=True)
            claim = try_lock(folder.parent / f"{folder.name}.lock")
            if claim is None:  # another runner is on it
                continue
            try:
                if str(folder) in finished(grid):
                    continue
                refusal = flags_refusal(cell_flags(grid, cell))
                if refusal:  # an option gessl.train lacks: not recorded, so the cell runs once it has it
                    print(f"study {grid['name']}: {cell} not run, gessl.train refuses its flags: {refusal}", flush=True)
                    unrunnable.append(f"{cell.variant} ({refusal})")
                    continue
                print(f"study {grid['name']}: {cell}", flush=True)
                record = run_cell(grid, cell, args.calibration_steps)
                curve = record.pop("curve", [])
                with locked(results_lock(grid)):
                    if "refused" not in record:
                        keep(grid, cell, folder)
                        for point in curve:
                            keep(grid, Cell(cell.dataset, point["budget"], cell.variant, cell.seed),
                                 Path(point["folder"]))
                    append_jsonl(Path(grid["results"]) / "cells.jsonl",
                                 [{**r, "time": time.time()} for r in [record, *curve]])
                    write_summaries(grid, finished(grid))
            finally:
                os.close(claim)
    with locked(results_lock(grid)):
        done = finished(grid)
        table = write_summaries(grid, done)
        write_figure(grid, table)
    print(markdown(grid, table, done))
    if unrunnable:
        raise UserError("not run, as gessl.train does not take their flags (rerun once it does): "
                        + "; ".join(dict.fromkeys(unrunnable)))
    below = below_random(table)
    if below:
        raise UserError("not above the random backbone: " + "; ".join(
            f"{variant} on {setting} (trained on {dataset}, {budget})" for variant, setting, dataset, budget in below))


if __name__ == "__main__":
    run_cli(main)
