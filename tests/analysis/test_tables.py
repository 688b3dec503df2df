"""The report's numbers: stored means and intervals, best per column, grouping, paired differences."""
import math
import statistics

import numpy as np
import pandas as pd
import pytest

import yaml

from analysis import report, tables
from tests.analysis.conftest import (AXES, CROWDING, EPISODES, RUNS, crowding_value,
                                     episode_accuracies, record, sigma_value, write_jsonl)

RANDOM = "random init (conv4)"
MODELS = ["simclr", "simclr-dsa", "simclr-gessl", "vicreg", RANDOM]


def read_csv(out):
    return pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])


def test_csv_holds_each_stored_mean_and_interval_once_per_model(full_report):
    out, _ = full_report
    table = read_csv(out)
    fewshot = table[table["protocol"] == "fewshot"]
    assert sorted(fewshot["model"].unique()) == sorted(MODELS)
    assert len(fewshot) == len(MODELS) * len(AXES) * 2  # the random backbones are one model
    for row in fewshot.itertuples():
        source = "simclr (random init)" if row.model == RANDOM else row.model
        acc = episode_accuracies(source, row.axis, row.shots)
        assert row.value == pytest.approx(acc.mean())
        assert row.ci95 == pytest.approx(1.96 * statistics.stdev(acc) / math.sqrt(EPISODES))
        assert row.dataset == AXES[row.axis][0] and row.split == AXES[row.axis][1]
    crowding = table[table["protocol"] == "crowding"].set_index(["model", "metric"])["value"]
    for model in ("simclr", "simclr-dsa", "vicreg"):
        for metric in CROWDING:
            assert crowding[model, metric] == pytest.approx(crowding_value(model, metric))
    sigma = table[table["metric"] == "sigma"].set_index(["model", "axis"])["value"]
    assert sigma["simclr-dsa", "overall"] == pytest.approx(sigma_value("simclr-dsa", "overall"))


def test_models_carry_base_variant_and_backbone_from_config(full_report):
    out, _ = full_report
    info = read_csv(out).drop_duplicates("model").set_index("model")
    expected = {"simclr": ("simclr", "plain"), "simclr-dsa": ("simclr", "+DSA"),
                "simclr-gessl": ("simclr", "+GeSSL"), "vicreg": ("vicreg", "plain"),
                RANDOM: ("random", "random init")}
    assert {m: (info.loc[m, "base"], info.loc[m, "variant"]) for m in MODELS} == expected
    assert set(info["backbone"]) == {"conv4"}


def test_best_is_the_highest_accuracy_and_the_lowest_crowding_per_setting(full_report):
    out, _ = full_report
    table = read_csv(out)
    setting = ["dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
               "metric"]
    lower = {"intra_class_variance", "crowding_ratio", "crowded_share", "sigma"}
    ranked = table[table["model"] != RANDOM]  # a reference is never best
    for _, rows in ranked.groupby(setting, dropna=False):
        metric = rows["metric"].iloc[0]
        values = dict(zip(rows["model"], rows["value"]))
        target = min(values.values()) if metric in lower else max(values.values())
        expected = {m for m, v in values.items() if v == target} if len(values) > 1 else set()
        assert set(rows.loc[rows["best"], "model"]) == expected, metric
    assert not table.loc[table["model"] == RANDOM, "best"].any()


def test_markdown_groups_variants_of_a_base_and_bolds_the_best(full_report):
    out, _ = full_report
    text = (out / "results.md").read_text()
    section = text.split("### Accuracy (%), glyphs (evaluation split)")[1].split("###")[0]
    lines = [l for l in section.strip().splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["base", "variant", "model", "generalization: 5-way 1-shot",
                      "generalization: 5-way 5-shot"]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    assert [r[:3] for r in rows] == [["simclr", "plain", "simclr"], ["", "+DSA", "simclr-dsa"],
                                     ["", "+GeSSL", "simclr-gessl"], ["vicreg", "plain", "vicreg"],
                                     ["random", "random init", RANDOM]]
    table = read_csv(out)
    for row in rows:
        for column, shots in ((3, 1), (4, 5)):
            record = table[(table["model"] == row[2]) & (table["axis"] == "generalization")
                           & (table["shots"] == shots) & (table["protocol"] == "fewshot")].iloc[0]
            cell = f"{record.value:.2f} ± {record.ci95:.2f}"
            assert row[column] == (f"**{cell}**" if record.best else cell)
    assert section.count("**") == 2 * 2  # one best cell per column, no ties here


def test_crowding_and_sigma_tables_leave_a_gap_for_a_model_without_them(full_report):
    out, _ = full_report
    text = (out / "results.md").read_text()
    crowding = text.split("### Crowding of the classes, glyphs (evaluation split)")[1].split("###")[0]
    assert "simclr-gessl" not in crowding and "intra-class variance ↓" in crowding
    sigma = text.split("### σ universality, glyphs (evaluation split)")[1].split("###")[0]
    assert "generalization" in sigma and "overall" in sigma and "simclr-gessl" not in sigma


def reference_difference(a, b):
    """Mean and 1.96 s / sqrt(n) of the per-episode differences, with plain loops."""
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, 1.96 * math.sqrt(variance) / math.sqrt(len(diffs))


def test_default_pairs_give_the_reference_paired_difference(full_report):
    out, _ = full_report
    paired = pd.read_csv(out / "paired.csv")
    assert set(zip(paired["model_a"], paired["model_b"])) == {("simclr-dsa", "simclr"),
                                                              ("simclr-gessl", "simclr")}
    assert len(paired) == 2 * len(AXES) * 2
    for row in paired.itertuples():
        a = episode_accuracies(row.model_a, row.axis, row.shots)
        b = episode_accuracies(row.model_b, row.axis, row.shots)
        mean, ci95 = reference_difference(a, b)
        assert (row.difference, row.ci95) == pytest.approx((mean, ci95))
        assert (row.mean_a, row.mean_b, row.n) == pytest.approx((a.mean(), b.mean(), EPISODES))


def test_explicit_pairs_accept_run_names_of_a_merged_random_backbone(full_runs):
    df = report.load_results([full_runs])
    notes = report.Notes()
    pairs = [(report.resolve_model(df, "simclr"), report.resolve_model(df, "vicreg (random init)")),
             (report.resolve_model(df, "vicreg"), report.resolve_model(df, "simclr"))]
    assert pairs == [("simclr", RANDOM), ("vicreg", "simclr")]
    paired = tables.paired_differences(report.load_episodes(df, notes), pairs, notes)
    assert set(zip(paired["model_a"], paired["model_b"])) == {("simclr", RANDOM)}
    row = paired[(paired["axis"] == "discriminability") & (paired["shots"] == 5)].iloc[0]
    expected = reference_difference(episode_accuracies("simclr", "discriminability", 5),
                                    episode_accuracies("x (random init)", "discriminability", 5))
    assert (row.difference, row.ci95) == pytest.approx(expected)
    assert any("vicreg vs simclr: no episodes scored on both" in n for n in notes)


def test_only_identical_episodes_are_paired():
    same = {("a", (("labels", "x"), ("shots", "1"))): np.array([50.0, 60.0]),
            ("b", (("labels", "x"), ("shots", "1"))): np.array([40.0, 70.0])}
    assert tables.paired_differences(same, [("a", "b")], report.Notes())["n"].tolist() == [2]
    episodes = {("a", (("labels", "x"), ("shots", "1"))): np.array([50.0, 60.0]),
                ("b", (("labels", "y"), ("shots", "1"))): np.array([40.0, 70.0]),
                ("b", (("labels", "x"), ("shots", "5"))): np.array([40.0, 70.0])}
    notes = report.Notes()
    assert tables.paired_differences(episodes, [("a", "b")], notes).empty
    assert any("a vs b: no episodes scored on both" in n for n in notes)


def test_several_plain_runs_of_a_base_are_not_guessed(full_runs):
    df = report.load_results([full_runs])
    twin = df[df["model"] == "simclr"].assign(model="simclr-seed1", run="simclr-seed1")
    notes = report.Notes()
    pairs = tables.default_pairs(pd.concat([df, twin], ignore_index=True), notes)
    assert all(b not in ("simclr", "simclr-seed1") for _, b in pairs)
    assert any("several plain simclr runs" in n and "--pair simclr-dsa" in n for n in notes)


def test_base_of_every_run_is_read_from_its_own_config(full_runs):
    df = report.load_results([full_runs / "vicreg", full_runs / "simclr-dsa"])
    variants = dict(zip(df["model"], df["variant"]))
    assert variants["vicreg"] == "plain" and variants["simclr-dsa"] == "+DSA"
    # with only two folders the random backbones still scored alike, so they are merged
    assert variants[RANDOM] == "random init" and set(RUNS) >= set(df["model"]) - {RANDOM}


def run_folder(path, config, records):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    write_jsonl(path / "results.jsonl", records)


def test_runs_of_the_same_folder_name_under_other_paths_stay_apart(tmp_path):
    for folder, value in (("lr-0.001", 60.0), ("lr-0.01", 70.0)):
        run_folder(tmp_path / folder / "simclr-conv4-seed0", {"base": "simclr", "backbone": "conv4"},
                   [record("simclr-conv4-seed0", value, 1.0), record("simclr-conv4-seed0 (random init)", 40.0, 1.0)])
    df = report.load_results([tmp_path])
    values = dict(zip(df["model"], df["value"]))
    assert values == {"lr-0.001/simclr-conv4-seed0": 60.0, "lr-0.01/simclr-conv4-seed0": 70.0,
                      "random init (conv4)": 40.0}
    assert report.resolve_model(df, "lr-0.01/simclr-conv4-seed0") == "lr-0.01/simclr-conv4-seed0"
    with pytest.raises(report.UserError, match="'simclr-conv4-seed0' names 2 models"):
        report.resolve_model(df, "simclr-conv4-seed0")


def test_results_of_other_suites_seeds_or_episode_counts_are_columns_of_their_own(tmp_path):
    run_folder(tmp_path / "a", {"base": "simclr"}, [record("a", 60.0, 1.0, seed=0, suite="standard", episodes=600)])
    run_folder(tmp_path / "b", {"base": "vicreg"}, [record("b", 70.0, 1.0, seed=1, suite="standard", episodes=600),
                                                   record("b", 65.0, 1.0, seed=0, suite="quick", episodes=200)])
    df = report.load_results([tmp_path])
    assert len(df) == 3  # b's two evaluations are both kept
    assert not tables.mark_best(df)["best"].any()  # no two models share a setting
    (title, cells, best), = tables.wide_tables(df)
    assert [c for c in cells.columns if ":" in c] == [
        "generalization: 5-way 1-shot (quick suite, 200 episodes, seed 0)",
        "generalization: 5-way 1-shot (standard suite, 600 episodes, seed 0)",
        "generalization: 5-way 1-shot (standard suite, 600 episodes, seed 1)"]


def test_a_reference_is_never_bold(tmp_path):
    runs = {"ssl": ("simclr", 60.0, 0.3), "ssl2": ("vicreg", 55.0, 0.4), "sup": ("supervised", 80.0, 0.2)}
    for run, (base, accuracy, sigma) in runs.items():
        run_folder(tmp_path / run, {"base": base, "backbone": "conv4"},
                   [record(run, accuracy, 1.0), record(f"{run} (random init)", 40.0, 1.0),
                    record(run, sigma, 0.01, protocol="universality", metric="sigma", classifier=None),
                    record(f"{run} (random init)", 0.0002, 0.0001, protocol="universality", metric="sigma",
                           classifier=None)])
    marked = tables.mark_best(report.load_results([tmp_path]))
    assert set(zip(marked.loc[marked["best"], "model"], marked.loc[marked["best"], "metric"])) == {
        ("ssl", "accuracy"), ("ssl", "sigma")}


def test_the_pixel_baseline_on_lakes_runs_is_a_reference(tmp_path):
    lake = {"dataset": "omniglot-lake", "split": "runs", "axis": "transferability", "protocol": "runs",
            "classifier": "nearest", "ways": 20, "shots": 1, "queries": 1, "episodes": 20, "metric": "error"}
    for run, error in (("ssl", 45.0), ("ssl2", 50.0)):
        run_folder(tmp_path / run, {"base": "simclr", "backbone": "conv4", "meta": "gessl" if run == "ssl2" else "none"},
                   [record(run, error, 7.0, **lake), record(f"{run} (random init)", 75.5, 4.9, **lake),
                    record(f"{run} (pixels: modified Hausdorff)", 38.75, 7.6, **lake)])
    df = report.load_results([tmp_path])
    models = dict(zip(df["model"], df["variant"]))
    assert models["pixels: modified Hausdorff"] == "pixels"  # the same in both folders: one model
    marked = tables.mark_best(df)
    assert marked.loc[marked["best"], "model"].tolist() == ["ssl"]  # the lowest error among the trained
    assert set(report.model_order(df)[-2:]) == {"random init (conv4)", "pixels: modified Hausdorff"}  # last
    (title, cells, best), = tables.wide_tables(df)
    assert "transferability: Lake's 20-way 1-shot runs error" in cells.columns
