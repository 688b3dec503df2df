"""The study runner (benchmarks/study.py): a tiny grid of 2-step cells, trained and evaluated by
gessl.train and gessl.evaluate, summarised against episodes read back here; a rerun skips finished
cells and reruns one that was killed."""
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gessl import evaluate, train
from gessl.backbones import load_backbone
from gessl.config import resolve_config
from tasks.common.errors import UserError
from tests.tasks.data.test_omniglot import fake_runs, fake_small

spec = importlib.util.spec_from_file_location("study", Path(__file__).resolve().parents[2] / "benchmarks" / "study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def write_grid(tmp_path, glyph_root, **changes):
    grid = {"name": "tiny", "runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
            "seeds": [0], "budgets": [{"steps": 2}], "reference": "plain",
            "common": f"--meta none --batch-size 16 --log-every 1 --data-root {glyph_root}",
            "evaluate": "--suite quick --episodes 6 --axes generalization --offline",
            "variants": {"plain": "", "slower": "--lr 1e-4"}, **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def lines(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / "results" / name).read_text().splitlines()]


def records(tmp_path):
    return lines(tmp_path, "cells.jsonl")


def per_seed(tmp_path):
    text = lzma.decompress((tmp_path / "results" / "per_seed.jsonl.xz").read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines()]


def accuracies(folder):
    with np.load(folder / "episodes.npz") as saved:
        return {name.split("/", 1)[1]: saved[name] for name in saved.files if name.split("/", 1)[0] == folder.name}


def test_cells_are_trained_evaluated_recorded_and_summarised_against_their_episodes(glyph_root, tmp_path, capsys):
    study.main([str(write_grid(tmp_path, glyph_root))])
    cells = tmp_path / "runs" / "glyphs-2steps"
    assert [(r["variant"], r["steps"]) for r in records(tmp_path)] == [("plain", 2), ("slower", 2)]
    assert json.loads((cells / "slower-seed0" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    a, b = accuracies(cells / "slower-seed0"), accuracies(cells / "plain-seed0")
    rows = per_seed(tmp_path)
    assert len(rows) == len(a) == 2  # 1 and 5 shots
    for row in rows:
        key = next(k for k in a if k.split("/")[5] == str(row["shots"]))  # dataset/split/axis/classifier/ways/shots/...
        diff = a[key] - b[key]
        assert row["difference"] == pytest.approx(diff.mean())
        assert row["ci95"] == pytest.approx(1.96 * diff.std(ddof=1) / np.sqrt(len(diff)))
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "| glyphs | 2steps | slower |" in text
    one_shot = next(r for r in summary["table"] if r["variant"] == "slower" and "1-shot" in r["setting"])
    steps = {r["variant"]: r["steps"] for r in records(tmp_path)}
    assert (f"| slower | 1 | {steps['slower']} | " in text and  # the at-a-glance table: accuracy (difference)
            f"| {one_shot['mean']:.1f} ({study.difference_text(one_shot)}) |" in text)
    assert f"| plain | 1 | {steps['plain']} | " in text and f"| {one_shot['reference']:.1f} |" in text
    assert (tmp_path / "results" / "differences.png").stat().st_size > 10_000  # the figure over seeds
    kept = {p: p.read_bytes() for p in (tmp_path / "results").iterdir()}
    study.main([str(tmp_path / "grid.yaml"), "--against", "slower"])  # plain − slower: the same pairs, negated
    against = capsys.readouterr().out
    assert "paired differences against slower" in against
    row = next(line for line in against.splitlines()
               if line.startswith(f"| glyphs | 2steps | plain | {one_shot['setting']} | 1 | "))
    assert (f"| {one_shot['reference']:.2f} | {one_shot['mean']:.2f} | " in row
            and f"{-one_shot['difference']:+.2f} ± {one_shot['ci95_episodes']:.2f}" in row)
    assert {p: p.read_bytes() for p in (tmp_path / "results").iterdir()} == kept


def test_random_true_compares_every_variant_with_its_random_backbone_and_fails_when_not_above(glyph_root,
                                                                                             tmp_path):
    grid = write_grid(tmp_path, glyph_root, random=True, evaluate="--suite quick --episodes 6 --axes generalization "
                      "--shots 1 --offline")
    folder = tmp_path / "runs" / "glyphs-2steps"
    try:
        study.main([str(grid)])
        failed = None
    except UserError as exc:
        failed = str(exc)
    expected = []
    for variant in ("plain", "slower"):
        run = accuracies(folder / f"{variant}-seed0")
        with np.load(folder / f"{variant}-seed0" / "episodes.npz") as saved:
            random = {name.split("/", 1)[1]: saved[name] for name in saved.files
                      if name.split("/", 1)[0] == f"{variant}-seed0 (random init)"}
        (key, a), = run.items()
        expected.append((variant, (a - random[key]).mean()))
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    got = [(r["variant"], r["difference"]) for r in summary["table"] if r["against"] == "random"]
    assert got == [(v, pytest.approx(d)) for v, d in expected]
    below = [v for v, d in expected if d <= 0]
    if below:
        assert failed and all(v in failed for v in below)
    else:
        assert failed is None
    assert "## Against its random backbone" in (tmp_path / "results" / "summary.md").read_text()


def test_below_random_names_the_settings_not_above_their_random_backbone():
    table = [{"against": "random", "variant": v, "setting": "s", "dataset": "glyphs", "budget": b, "difference": d}
             for v, b, d in [("up", "2steps", 0.5), ("flat", "2steps", 0.0), ("down", "1min", -3.0)]]
    table.append({"against": "plain", "variant": "x", "setting": "s", "dataset": "glyphs", "budget": "2steps",
                  "difference": -9.0})
    assert study.below_random(table) == [("flat", "s", "glyphs", "2steps"), ("down", "s", "glyphs", "1min")]


def test_column_labels_name_the_axis_only_where_two_axes_score_one_dataset():
    settings = ["discriminability glyphs: 5-way 1-shot", "generalization glyphs: 5-way 1-shot",
                "generalization omniglot-lake: 20-way 1-shot", "transferability mnist: 5-way 5-shot"]
    assert study.short_settings(settings) == ["glyphs (discriminability) 5w1s", "glyphs (generalization) 5w1s",
                                              "omniglot-lake 20w1s", "mnist 5w5s"]


def test_a_rerun_skips_finished_cells_and_reruns_a_killed_one(glyph_root, tmp_path, monkeypatch):
    grid = write_grid(tmp_path, glyph_root)
    real_evaluate = evaluate.main

    def killed(argv):  # the second cell dies after training, before it is recorded
        if "slower" in argv[0]:
            raise KeyboardInterrupt
        real_evaluate(argv)

    monkeypatch.setattr(evaluate, "main", killed)
    with pytest.raises(KeyboardInterrupt):
        study.main([str(grid)])
    assert [r["variant"] for r in records(tmp_path)] == ["plain"]
    monkeypatch.setattr(evaluate, "main", real_evaluate)
    calls = []
    real_train = train.main
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv) or real_train(argv))
    study.main([str(grid)])
    assert len(calls) == 1 and "slower-seed0" in calls[0][calls[0].index("--out") + 1] and "--resume" in calls[0]
    assert [r["variant"] for r in records(tmp_path)] == ["plain", "slower"]
    study.main([str(grid)])  # everything recorded: nothing trains
    assert len(calls) == 1


def test_a_refused_cell_is_recorded_with_its_reason(glyph_root, tmp_path):
    study.main([str(write_grid(tmp_path, glyph_root, variants={"plain": "", "bad": "--meta gessl --tasks-per-step 8"}))])
    assert "fewer than 2 images" in records(tmp_path)[1]["refused"]


@pytest.mark.parametrize("changes, message", [
    ({"budget": [{"steps": 2}]}, "only these keys"),
    ({"budgets": [{"hours": 1}]}, "a budget is"),
    ({"reference": "nope"}, "is not one of the variants"),
])
def test_bad_grids_are_user_errors(glyph_root, tmp_path, changes, message):
    with pytest.raises(UserError, match=message):
        study.main([str(write_grid(tmp_path, glyph_root, **changes))])


def test_a_budget_in_minutes_becomes_the_calibrated_steps_kept_for_reruns(glyph_root, tmp_path):
    grid = write_grid(tmp_path, glyph_root, budgets=[{"minutes": 0.02}], variants={"plain": ""})
    study.main([str(grid), "--calibration-steps", "2"])
    calibration = json.loads((tmp_path / "results" / "calibration.json").read_text())["glyphs/0.02min/plain"]
    assert calibration["steps"] == max(1, int(0.02 * 60 / calibration["seconds_per_step"]))
    assert records(tmp_path)[0]["steps"] == calibration["steps"]
    assert (tmp_path / "runs" / "glyphs-0.02min" / "plain-seed0" / "backbone.pt").is_file()


def test_budget_trains_only_that_budget_s_cells_and_an_unknown_label_is_a_user_error(glyph_root, tmp_path):
    grid = write_grid(tmp_path, glyph_root, budgets=[{"steps": 1}, {"steps": 2}], variants={"plain": ""})
    with pytest.raises(UserError, match=r"--budget \['3steps'\] is not a budget of the grid"):
        study.main([str(grid), "--budget", "3steps"])
    study.main([str(grid), "--budget", "2steps"])
    assert [(r["budget"], r["variant"]) for r in records(tmp_path)] == [("2steps", "plain")]


@pytest.mark.parametrize("extra, message", [(["--summarise"], "not allowed with argument --against"),
                                             (["--budget", "2steps"], "--against trains none")])
def test_against_prints_only_so_it_refuses_the_options_that_train_or_write(glyph_root, tmp_path, capsys, extra,
                                                                           message):
    grid = write_grid(tmp_path, glyph_root)
    with pytest.raises(SystemExit) as stopped:
        study.main([str(grid), "--against", "slower", *extra])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_every_variant_of_a_budget_in_minutes_is_timed_before_its_first_cell_trains(glyph_root, tmp_path,
                                                                                     monkeypatch):
    """Variants compared at equal wall-clock are timed back to back, under one load, not cell by cell."""
    events = []
    timer, trainer = study.seconds_per_step, train.main
    monkeypatch.setattr(study, "seconds_per_step",
                        lambda flags, steps: events.append(("time", flags[flags.index("--lr") + 1]
                                                            if "--lr" in flags else "plain")) or timer(flags, steps))
    monkeypatch.setattr(train, "main", lambda argv: events.append(
        ("train" if argv[argv.index("--out") + 1].startswith(str(tmp_path)) else "timing run",
         argv[argv.index("--max-steps") + 1])) or trainer(argv))
    study.main([str(write_grid(tmp_path, glyph_root, budgets=[{"minutes": 0.02}])), "--calibration-steps", "2"])
    # each timing: one gessl.train run in a scratch folder, of twice the calibration steps
    assert [e[0] for e in events] == ["time", "timing run", "time", "timing run", "train", "train"]
    assert events[2] == ("time", "1e-4") and events[1][1] == events[3][1] == "4"
    calibration = json.loads((tmp_path / "results" / "calibration.json").read_text())
    assert set(calibration) == {"glyphs/0.02min/plain", "glyphs/0.02min/slower"}
    assert [r["steps"] for r in records(tmp_path)] == [calibration["glyphs/0.02min/plain"]["steps"],
                                                       calibration["glyphs/0.02min/slower"]["steps"]]


def main_past_random_check(argv):
    """``study.main``, past its closing error when a variant is not above its random backbone (2 steps may not be)."""
    try:
        study.main(argv)
    except UserError as exc:
        if "not above the random backbone" not in str(exc):
            raise


def test_a_fresh_checkout_without_the_run_folders_resumes_from_the_kept_results(glyph_root, tmp_path, monkeypatch):
    omniglot = fake_runs(fake_small(tmp_path / "omniglot"))  # Lake's runs: accuracies of 20 answers, 100 − error
    grid = write_grid(tmp_path, glyph_root, random=True, evaluate="--suite quick --episodes 6 --offline",
                      common=f"--meta none --batch-size 16 --log-every 1 --data-root {glyph_root}{os.pathsep}{omniglot}")
    main_past_random_check([str(grid)])
    before, table = per_seed(tmp_path), (tmp_path / "results" / "summary.md").read_text()
    runs = tmp_path / "runs" / "glyphs-2steps"
    run_episodes = {}
    for folder in runs.glob("*-seed0"):
        with np.load(folder / "episodes.npz") as saved:
            run_episodes[folder.name] = {key: saved[key] for key in saved.files if key != "fields"}
    run_files = {folder.name: {"config": (folder / "config.yaml").read_text(),
                               "results": [json.loads(line) for line in (folder / "results.jsonl").open()]}
                 for folder in runs.glob("*-seed0")}
    expected = [{"against": against, **row} for variant, against, row in
                [("slower", "plain", r) for r in evaluate.paired_differences(runs / "slower-seed0", runs / "plain-seed0")]
                + [(v, "random", r) for v in ("plain", "slower")
                   for r in evaluate.random_differences(runs / f"{v}-seed0")]]
    shutil.rmtree(tmp_path / "runs")  # run folders are not committed; the results folder is
    calls = []
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv))
    main_past_random_check([str(grid)])
    assert not calls  # every cell is recorded with the results
    assert per_seed(tmp_path) == before and (tmp_path / "results" / "summary.md").read_text() == table
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if not p.name.startswith(".")) == [
        "cells.jsonl", "differences.pdf", "differences.png", "episode_counts.npz", "evaluations.jsonl.xz",
        "per_seed.jsonl.xz", "summary.json", "summary.md"]
    # the rows are those gessl.evaluate pairs from the run folders' own episodes.npz, on identical episodes
    got = [{k: v for k, v in r.items() if k not in ("trained_on", "budget", "variant", "train_seed", "steps",
                                                    "train_seconds")} for r in before]
    assert sorted(got, key=json.dumps) == sorted(expected, key=json.dumps) and len(got) >= 3 * 2
    # the kept answers give back every stored accuracy bit for bit, Lake's runs included
    kept = study.read_store(study.read_grid(grid))
    for name, saved in run_episodes.items():
        entries = kept[f"glyphs-2steps/{name}"]
        assert sorted(entries) == sorted(saved)
        assert any("/runs/" in k for k in entries)
        for key in entries:
            assert entries[key].dtype == np.float64 and entries[key].tobytes() == saved[key].tobytes()
    evaluations = study.read_evaluations(study.read_grid(grid))  # each cell's config.yaml and results.jsonl
    assert {name: {k: evaluations[f"glyphs-2steps/{name}"][k] for k in ("config", "results")}
            for name in run_files} == run_files and len(run_files) == 2


def test_stored_answers_decode_to_the_accuracies_and_other_values_are_kept_as_they_are(tmp_path):
    grid = {"results": str(tmp_path)}
    few = "run/d/s/a/proto/5/1/15/4/0/abc"          # 5 ways × 15 queries: 75 answers an episode
    lake = "run/l/runs/a/nearest/20/1/1/3/0/abc"     # 20 ways × 1 query: 20 answers a run
    correct = np.array([0, 1, 74, 75])
    wrong = np.array([0, 9, 11])  # 100 − 100 · w/20 ≠ 100 · (20 − w)/20 in float64 for 9 and 11
    store = {"c/x-seed0": {few: 100 * (correct / 75), lake: 100 - 100 * (wrong / 20)},
             "c/y-seed0": {few: np.array([12.5, 1 / 3, 99.0, 50.0])}}  # no count of 75 answers gives these
    study.write_store(grid, store)
    assert study.encode(few, store["c/x-seed0"][few])[0] == "correct"
    assert 100 * ((20 - wrong) / 20)[1] != store["c/x-seed0"][lake][1]
    assert list(study.encode(lake, store["c/x-seed0"][lake])[1]) == [0, 9, 11]
    back = study.read_store(grid)
    assert {c: {k: v.tobytes() for k, v in e.items()} for c, e in back.items()} == {
        c: {k: np.asarray(v, np.float64).tobytes() for k, v in e.items()} for c, e in store.items()}
    with np.load(tmp_path / study.STORE) as saved:
        assert saved["counts"].dtype == np.uint8 and list(saved["kinds"]) == ["correct", "wrong", "percent"]


def test_a_cell_stopped_after_its_first_checkpoint_is_not_recorded_as_refused(glyph_root, tmp_path, monkeypatch):
    grid = write_grid(tmp_path, glyph_root, variants={"plain": ""})

    def stopped(argv):  # what gessl.train raises when SIGTERM stops it after saving
        folder = Path(argv[argv.index("--out") + 1])
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"saved")
        raise UserError("stopped by SIGTERM after step 1, saved; continue with --resume")
    monkeypatch.setattr(train, "main", stopped)
    with pytest.raises(UserError, match="stopped by SIGTERM"):
        study.main([str(grid)])
    assert not (tmp_path / "results" / "cells.jsonl").exists()


def test_two_runners_on_one_grid_share_its_cells_each_trained_once(glyph_root, tmp_path):
    grid = write_grid(tmp_path, glyph_root)
    script = Path(study.__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runners = [subprocess.Popen([sys.executable, str(script), str(grid)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=300)[0] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    started = [line.split(": ", 1)[1] for out in outputs for line in out.splitlines() if line.startswith("study tiny: ")]
    assert len(started) == len(set(started)) == 2  # every cell started by exactly one runner
    assert sorted(r["variant"] for r in records(tmp_path)) == ["plain", "slower"]
    for folder in (tmp_path / "runs" / "glyphs-2steps").glob("*-seed?"):
        steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
    assert len(per_seed(tmp_path)) == 2


def test_a_curve_keeps_the_backbone_at_its_points_with_the_schedule_of_the_whole_budget(glyph_root, tmp_path):
    """Curve points: backbones of the one uninterrupted run at the steps of the curve's minutes, whose
    learning-rate schedule spans the cell's steps (not the point's), evaluated, recorded and paired."""
    common = f"--meta none --batch-size 16 --log-every 1 --warmup-steps 1 --data-root {glyph_root}"
    grid = write_grid(tmp_path, glyph_root, common=common, budgets=[{"minutes": 1}],
                      curve={"minutes": [0.25, 0.5], "targets": ["glyphs"]})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "calibration.json").write_text(json.dumps(  # 12 steps a minute, so points at 3 and 6
        {f"glyphs/1min/{v}": {"seconds_per_step": 5.0, "steps": 12} for v in ("plain", "slower")}))
    study.main([str(grid)])
    assert sorted((r["budget"], r["variant"], r["steps"]) for r in records(tmp_path)) == sorted(
        (b, v, s) for v in ("plain", "slower") for b, s in [("1min", 12), ("1min-at0.25min", 3), ("1min-at0.5min", 6)])
    point = tmp_path / "runs" / "glyphs-1min-at0.25min" / "plain-seed0"
    kept, _ = load_backbone(point / "backbone.pt")

    def trained(steps, total):  # the plain cell's training, stopped after ``steps`` of a schedule over ``total``
        options = train.parse_args([*study.cell_flags(study.read_grid(grid), study.Cell("glyphs", "1min", "plain", 0)),
                                    "--max-steps", str(total)])
        options.pop("resume")
        trainer = train.Trainer(resolve_config(options), tmp_path / "scratch")
        for _ in range(steps):
            trainer.train_step()
        return trainer.model.backbone.state_dict()

    whole, segment = trained(3, 12), trained(3, 3)
    assert all(torch.equal(kept.state_dict()[k], whole[k]) for k in whole)
    assert not all(torch.equal(whole[k], segment[k]) for k in whole)  # a schedule over 3 steps trains otherwise
    with np.load(point / "episodes.npz") as saved:
        assert any(k.startswith("plain-seed0/glyphs/") for k in saved.files)
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "### Trained on glyphs, 1min-at0.25min" in text and "| slower | 1 | 3 | " in text
    table = json.loads((tmp_path / "results" / "summary.json").read_text())["table"]
    assert {r["budget"] for r in table} == {"1min", "1min-at0.25min", "1min-at0.5min"}
    assert (tmp_path / "results" / "curve.png").stat().st_size > 10_000
    before = per_seed(tmp_path)
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the points are kept with the results
    study.main([str(grid), "--summarise"])
    assert per_seed(tmp_path) == before


def test_a_variant_whose_flags_gessl_train_does_not_take_is_not_run_nor_recorded(glyph_root, tmp_path, monkeypatch):
    grid = write_grid(tmp_path, glyph_root, variants={"plain": "", "later": "--option-to-come head"})
    with pytest.raises(UserError, match=r"not run.*later \(.*unrecognized arguments: --option-to-come head\)"):
        study.main([str(grid)])
    assert [r["variant"] for r in records(tmp_path)] == ["plain"]
    grid.write_text(grid.read_text().replace("--option-to-come head", "--lr 1e-4"))  # gessl.train takes it now
    calls = []
    real_train = train.main
    monkeypatch.setattr(train, "main", lambda argv: calls.append(argv) or real_train(argv))
    study.main([str(grid)])
    assert len(calls) == 1 and [r["variant"] for r in records(tmp_path)] == ["plain", "later"]
