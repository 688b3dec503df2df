"""The report reads run folders into tables, figures and a page; it skips missing pieces with a
note and fails cleanly on unreadable results."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import report
from tests.analysis.conftest import record, write_jsonl
from tests.helpers import drawn_text

REPO = Path(__file__).resolve().parents[2]

# (run, shots) -> (value, ci95) of the latest records
LATEST = {
    ("simclr-conv4", 1): (61.5, 0.9),
    ("simclr-conv4", 5): (80.25, 0.6),
    ("simclr-conv4 (random init)", 1): (42.0, 0.8),
    ("simclr-conv4 (random init)", 5): (55.75, 0.7),
}


@pytest.fixture
def runs(tmp_path):
    """A folder of two run folders without config.yaml, one nested deeper, each with an older
    superseded record: only results.jsonl, so every other piece of the report is missing."""
    root = tmp_path / "runs"
    for folder, run in (("simclr", "simclr-conv4"), ("baselines/random", "simclr-conv4 (random init)")):
        older = record(run, 99.0, 9.9, shots=1, time="2025-03-01T12:00:00+00:00")
        latest = [record(run, *LATEST[run, shots], shots=shots) for shots in (1, 5)]
        # The newer record comes first in the file: order of lines must not decide, time must.
        write_jsonl(root / folder / "results.jsonl", [latest[0], older, latest[1]])
    return root


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_csv_holds_the_latest_value_and_interval_per_run_and_shots(runs, tmp_path):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4
    found = {(r.run, r.shots): (r.value, r.ci95) for r in table.itertuples()}
    assert found == LATEST
    assert (table["time"] == "2025-03-02T12:00:00+00:00").all()
    # without config.yaml the model is its run name and its variant unknown
    assert list(table["model"]) == list(table["run"])
    assert set(table["variant"]) == {"?", "random init"}


def test_latest_record_wins_by_time_across_time_zones(tmp_path):
    run = tmp_path / "run"
    # 10:30+02:00 is 08:30 UTC, earlier than 09:00Z although it sorts later as a string.
    write_jsonl(run / "results.jsonl", [record("m", 70.0, 1.0, time="2025-03-02T09:00:00Z"),
                                        record("m", 10.0, 1.0, time="2025-03-02T10:30:00+02:00")])
    assert report.load_results([run])["value"].tolist() == [70.0]


def test_records_differing_in_a_key_field_are_all_kept(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "results.jsonl", [record("m", 70.0, 1.0),
                                        record("m", 60.0, 1.0, classifier="logreg"),
                                        record("m", 65.0, 1.0, queries=5)])
    assert sorted(report.load_results([run])["value"]) == [60.0, 65.0, 70.0]


def test_random_backbones_are_merged_only_when_they_scored_alike(tmp_path):
    for folder, value in (("a", 50.0), ("b", 50.0)):
        write_jsonl(tmp_path / "same" / folder / "results.jsonl",
                    [record(folder, 60.0, 1.0), record(f"{folder} (random init)", value, 1.0)])
    for folder, value in (("a", 50.0), ("b", 51.0)):
        write_jsonl(tmp_path / "differ" / folder / "results.jsonl",
                    [record(folder, 60.0, 1.0), record(f"{folder} (random init)", value, 1.0)])
    same = report.load_results([tmp_path / "same"])
    assert sorted(same["model"]) == ["a", "b", "random init (?)"]
    differ = report.load_results([tmp_path / "differ"])
    assert sorted(differ["model"]) == ["a", "a (random init)", "b", "b (random init)"]


def test_missing_pieces_are_skipped_with_a_note_not_a_crash(runs, tmp_path, capsys):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    err = capsys.readouterr().err
    written = {p.name for p in out.iterdir()}
    assert written == {"results.csv", "results.md", "index.html",
                       "fig1_fewshot_accuracy.png", "fig1_fewshot_accuracy.pdf",
                       "fig2_accuracy_vs_shots.png", "fig2_accuracy_vs_shots.pdf"}
    page = (out / "index.html").read_text()
    for skipped in ("figure 3 (σ universality per axis) skipped",
                    "figure 4 (crowding) skipped", "figure 5 (feature maps) skipped",
                    "figure 6 (training curves) skipped", "figure 7 (paired differences) skipped",
                    "no config.yaml", "no results on the discriminability and transferability axes",
                    "no linear or knn evaluation records"):
        assert skipped in page and skipped in err
    assert "fig3_sigma_universality.png" not in page


def test_a_run_with_one_number_of_shots_skips_only_figure_2(tmp_path, capsys):
    write_jsonl(tmp_path / "run" / "results.jsonl", [record("m", 70.0, 1.0)])
    report.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "fig1_fewshot_accuracy.png").is_file()
    assert not (tmp_path / "out" / "fig2_accuracy_vs_shots.png").exists()
    assert "figure 2 (accuracy against shots) skipped" in capsys.readouterr().err


def test_full_report_notes_only_what_is_really_missing(full_report):
    out, notes = full_report
    text = " | ".join(notes)
    assert "figure 4: no crowding metrics for simclr-gessl" in text
    assert "figure 3: no σ universality records for simclr-gessl" in text
    assert "vicreg: no training log" in text
    assert "figure 5: no feature_sample.npz" not in text  # vicreg is not chosen for the maps
    assert "skipped" not in text and "no config.yaml" not in text
    assert "no results on the transferability axis" in text


def test_index_html_shows_the_figures_the_tables_and_the_notes(full_report):
    out, notes = full_report
    page = (out / "index.html").read_text()
    assert page.count("<figure") == len(report.FIGURES)
    assert page.count('<table class="results">') == 5  # accuracy on 2 splits, crowding, σ, paired
    assert "<td class=\"name\">simclr-dsa</td>" in page and "<strong>" in page
    assert '<a href="results.csv">' in page and '<a href="paired.csv">' in page
    assert all(note.replace("'", "&#x27;") in page for note in notes)


def test_stale_figures_of_an_earlier_report_are_removed(full_report, runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(full_report[0], out)
    assert (out / "fig7_paired_differences.pdf").is_file() and (out / "paired.csv").is_file()
    report.write_report(report.load_results([runs]), out)
    assert not (out / "fig7_paired_differences.pdf").exists() and not (out / "paired.csv").exists()
    assert not (out / "fig4_crowding.png").exists()


def test_run_folders_are_found_recursively_and_given_folders_combine(runs):
    nested = report.load_results([runs])
    assert set(nested["run"]) == {"simclr-conv4", "simclr-conv4 (random init)"}
    one = report.load_results([runs / "simclr"])
    assert set(one["run"]) == {"simclr-conv4"}
    both = report.load_results([runs / "simclr", runs / "baselines"])
    assert len(both) == 4
    assert len(report.load_results([runs, runs / "simclr"])) == 4  # overlapping folders
    assert len(report.load_results([runs / "simclr" / "results.jsonl"])) == 2


def test_unparseable_lines_are_skipped_with_a_note(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "results.jsonl", [record("m", 70.0, 1.0), record("m", "n/a", 1.0, shots=5)],
                tail='[1, 2]\n{"run": "m", "val')
    notes = report.Notes()
    df = report.load_results([run], notes)
    assert df["value"].tolist() == [70.0]
    text = " | ".join(notes)
    assert "results.jsonl:3: skipped" in text and "results.jsonl:4: skipped" in text
    assert "skipped 1 record(s)" in text


def assert_failed_cleanly(code, err, out):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[-1] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "does not exist"),
    ("no_results", "no results.jsonl under"),
    ("empty_file", "no valid records"),
    ("missing_columns", "lack required field(s) ci95, time"),
    ("no_valid_values", "no valid records"),
    ("unknown_pair", "no model named 'nobody'; the models are: m"),
    ("not_utf8", "results.jsonl is not UTF-8 text"),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(case, message, tmp_path, capsys):
    target = tmp_path / "target"
    extra = []
    if case == "no_results":
        (target / "a" / "b").mkdir(parents=True)
    elif case == "empty_file":
        write_jsonl(target / "results.jsonl", [], tail="\n")
    elif case == "missing_columns":
        bad = record("m", 70.0, 1.0)
        del bad["ci95"], bad["time"]
        write_jsonl(target / "results.jsonl", [bad])
    elif case == "no_valid_values":
        write_jsonl(target / "results.jsonl", [record("m", "n/a", 1.0)])
    elif case == "not_utf8":
        write_jsonl(target / "results.jsonl", [record("m\udcff", 70.0, 1.0)])
        (target / "results.jsonl").write_bytes((target / "results.jsonl").read_bytes().replace(b"\\udcff", b"\xff"))
    elif case == "unknown_pair":
        write_jsonl(target / "results.jsonl", [record("m", 70.0, 1.0)])
        extra = ["--pair", "m", "nobody"]
    out = tmp_path / "out"
    code, err = run_main([target, "--out", out, *extra], capsys)
    assert_failed_cleanly(code, err, out)
    assert message in err
    if case == "no_results":
        assert "python -m gessl.evaluate RUN_DIR" in err


def test_one_bad_folder_among_good_ones_writes_nothing(runs, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main([runs, tmp_path / "nowhere", "--out", out], capsys)
    assert_failed_cleanly(code, err, out)


def test_a_failed_report_keeps_the_previous_one_whole(runs, tmp_path, capsys):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write_jsonl(tmp_path / "bad" / "results.jsonl", [record("m", "n/a", 1.0)])
    code, _ = run_main([bad.parent, "--out", out], capsys)
    assert code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(option in shown for option in ("--out", "--pair", "--map-models", "--map"))


def test_cli_runs_as_a_module(runs, tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.report", str(runs), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "index.html" in done.stdout and "note: figure 3" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "out" / "fig1_fewshot_accuracy.pdf").is_file()


def test_an_out_that_is_a_file_is_one_line_and_exit_2(runs, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code, err = run_main([runs, "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "a file of that name is in the way" in err
    assert (tmp_path / "out").read_text() == "a file"


def test_records_of_other_suites_episodes_and_seeds_each_get_their_own_column_and_panel(tmp_path, capsys):
    settings = [{"suite": "quick", "episodes": 10, "seed": 0}, {"suite": "standard", "episodes": 40, "seed": 0},
                {"suite": "standard", "episodes": 40, "seed": 1}]
    records = [record(run, 50.0 + i + 10 * (run == "b"), 1.0, shots=shots, **how)
               for i, how in enumerate(settings) for run in ("a", "b") for shots in (1, 5)]
    records += [record(run, 0.5 + i / 10, 0.1, protocol="crowding", metric="crowding_ratio", classifier=None,
                       ways=None, shots=None, queries=None, **how) for i, how in enumerate(settings) for run in "ab"]
    write_jsonl(tmp_path / "run" / "results.jsonl", records)
    out = tmp_path / "out"
    code = report.main([str(tmp_path / "run"), "--out", str(out)]) or 0
    assert code == 0
    for name in ("fig1_fewshot_accuracy", "fig2_accuracy_vs_shots", "fig4_crowding"):
        assert (out / f"{name}.png").is_file()
    table = pd.read_csv(out / "results.csv")
    assert len(table) == len(records)  # none replaced another
    markdown = (out / "results.md").read_text()
    for how in ("quick suite, 10 episodes, seed 0", "standard suite, 40 episodes, seed 0",
                "standard suite, 40 episodes, seed 1"):
        assert f"generalization: 5-way 1-shot ({how})" in markdown
    # the best of each column is the best of that setting alone: b, 10 points above a, in every one
    fewshot = table[table["protocol"] == "fewshot"]
    assert fewshot.loc[fewshot["best"], "model"].eq("b").all() and fewshot["best"].sum() == 6


def test_a_dollar_in_a_run_name_is_drawn_as_written(tmp_path):
    names = ["e2e/${BASE}_${SEED}", "cost $5 and $6"]
    write_jsonl(tmp_path / "run" / "results.jsonl",
                [record(run, 60.0 + i, 1.0, shots=shots) for i, run in enumerate(names) for shots in (1, 5)])
    out = tmp_path / "out"
    report.main([str(tmp_path / "run"), "--out", str(out)])
    assert (out / "fig1_fewshot_accuracy.png").is_file() and (out / "fig2_accuracy_vs_shots.png").is_file()
    for pdf in ("fig1_fewshot_accuracy.pdf", "fig2_accuracy_vs_shots.pdf"):  # the legends: no mathtext, no `\`
        assert set(names) <= set(drawn_text(out / pdf)), pdf
    assert all(name in pd.read_csv(out / "results.csv")["model"].tolist() for name in names)


def test_values_that_are_not_finite_and_negative_intervals_are_left_out_with_a_note(tmp_path, capsys):
    records = [record("inf", float("inf"), 1.0), record("nan-ci", 65.0, float("nan")), record("real", 70.0, 1.0),
               record("other", 60.0, 1.0), record("negative-ci", 80.0, -1.0), record("inf-ci", 90.0, float("inf"))]
    path = tmp_path / "run" / "results.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # Infinity and NaN as Python writes them
    out = tmp_path / "out"
    report.main([str(tmp_path / "run"), "--out", str(out)])
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["model"]) == ["nan-ci", "other", "real"]  # an interval that is not known stays
    assert table.set_index("model")["best"].to_dict() == {"nan-ci": False, "other": False, "real": True}
    assert "skipped 3 record(s) without run, metric, a finite value" in capsys.readouterr().err
