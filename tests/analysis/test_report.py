"""The report reads results.jsonl files into a table, a figure and a page, and fails cleanly."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis import report

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (run, shots) -> (value, ci95) of the latest records
LATEST = {
    ("simclr-conv4", 1): (61.5, 0.9),
    ("simclr-conv4", 5): (80.25, 0.6),
    ("simclr-conv4 (random init)", 1): (42.0, 0.8),
    ("simclr-conv4 (random init)", 5): (55.75, 0.7),
}


def record(run, shots, value, ci95, time="2025-03-02T12:00:00+00:00", **changes):
    return {"run": run, "dataset": "glyphs", "split": "test", "axis": "generalization",
            "protocol": "fewshot", "classifier": "prototypes", "ways": 5, "shots": shots,
            "queries": 15, "episodes": 600, "metric": "accuracy", "value": value, "ci95": ci95,
            "seed": 0, "version": "0.1.0", "time": time, **changes}


def write_jsonl(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


@pytest.fixture
def runs(tmp_path):
    """A folder of two run folders, one nested deeper, each with an older superseded record."""
    root = tmp_path / "runs"
    for folder, run in (("simclr", "simclr-conv4"), ("baselines/random", "simclr-conv4 (random init)")):
        older = record(run, 1, 99.0, 9.9, time="2025-03-01T12:00:00+00:00")
        latest = [record(run, shots, *LATEST[run, shots]) for shots in (1, 5)]
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


def test_latest_record_wins_by_time_across_time_zones(tmp_path):
    run = tmp_path / "run"
    # 10:30+02:00 is 08:30 UTC, earlier than 09:00Z although it sorts later as a string.
    write_jsonl(run / "results.jsonl", [record("m", 1, 70.0, 1.0, time="2025-03-02T09:00:00Z"),
                                        record("m", 1, 10.0, 1.0, time="2025-03-02T10:30:00+02:00")])
    assert report.load_results([run])["value"].tolist() == [70.0]


def test_records_differing_in_a_key_field_are_all_kept(tmp_path):
    run = tmp_path / "run"
    write_jsonl(run / "results.jsonl", [record("m", 1, 70.0, 1.0),
                                        record("m", 1, 60.0, 1.0, classifier="logreg"),
                                        record("m", 1, 65.0, 1.0, queries=5)])
    assert sorted(report.load_results([run])["value"]) == [60.0, 65.0, 70.0]


def test_png_is_a_valid_image(runs, tmp_path):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    png = out / "fewshot_accuracy.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 300


def test_error_bars_are_the_stored_intervals(runs, tmp_path, monkeypatch):
    figures = []

    class Recorded(report.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(report, "Figure", Recorded)
    report.plot_fewshot(report.load_results([runs]), tmp_path / "figure.png")
    ax = figures[0].axes[0]
    heights = [round(bar.get_height(), 2) for bars in ax.containers if hasattr(bars, "patches")
               for bar in bars]
    assert sorted(heights) == sorted(value for value, _ in LATEST.values())
    spans = []
    for line in ax.collections:  # error bars are LineCollections of one vertical segment
        for (x0, y0), (x1, y1) in line.get_segments():
            spans.append((round((y0 + y1) / 2, 2), round(abs(y1 - y0) / 2, 2)))
    assert sorted(spans) == sorted(LATEST.values())
    chance = [l for l in ax.lines if l.get_linestyle() == "--"]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(20.0)


def test_index_html_shows_the_figure_and_the_table(runs, tmp_path):
    out = tmp_path / "out"
    report.main([str(runs), "--out", str(out)])
    page = (out / "index.html").read_text()
    assert '<img src="fewshot_accuracy.png"' in page
    assert "<table" in page
    for (run, _), (value, ci95) in LATEST.items():
        assert f"<td>{run}</td>" in page
        assert f"<td>{value:.2f}</td>" in page and f"<td>{ci95:.2f}</td>" in page
    assert "99.00" not in page  # the superseded record is not shown


def test_run_folders_are_found_recursively_and_given_folders_combine(runs, tmp_path):
    nested = report.load_results([runs])
    assert set(nested["run"]) == {"simclr-conv4", "simclr-conv4 (random init)"}
    one = report.load_results([runs / "simclr"])
    assert set(one["run"]) == {"simclr-conv4"}
    both = report.load_results([runs / "simclr", runs / "baselines"])
    assert len(both) == 4
    assert len(report.load_results([runs, runs / "simclr"])) == 4  # overlapping folders
    assert len(report.load_results([runs / "simclr" / "results.jsonl"])) == 2


def test_unparseable_lines_are_skipped_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    write_jsonl(run / "results.jsonl", [record("m", 1, 70.0, 1.0), record("m", 5, "n/a", 1.0)],
                tail='[1, 2]\n{"run": "m", "val')
    df = report.load_results([run])
    assert df["value"].tolist() == [70.0]
    err = capsys.readouterr().err
    assert "results.jsonl:3: skipped" in err and "results.jsonl:4: skipped" in err
    assert "skipped 1 record(s)" in err


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
    ("no_fewshot", "no few-shot accuracy records"),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(case, message, tmp_path, capsys):
    target = tmp_path / "target"
    if case == "no_results":
        (target / "a" / "b").mkdir(parents=True)
    elif case == "empty_file":
        write_jsonl(target / "results.jsonl", [], tail="\n")
    elif case == "missing_columns":
        bad = record("m", 1, 70.0, 1.0)
        del bad["ci95"], bad["time"]
        write_jsonl(target / "results.jsonl", [bad])
    elif case == "no_valid_values":
        write_jsonl(target / "results.jsonl", [record("m", 1, "n/a", 1.0)])
    elif case == "no_fewshot":
        write_jsonl(target / "results.jsonl", [record("m", None, 88.0, None, protocol="linear")])
    out = tmp_path / "out"
    code, err = run_main([target, "--out", out], capsys)
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
    bad = write_jsonl(tmp_path / "bad" / "results.jsonl",
                      [record("m", None, 88.0, None, protocol="linear")])
    code, _ = run_main([bad.parent, "--out", out], capsys)
    assert code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_runs_as_a_module(runs, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "analysis.report", *map(str, args)],
                              cwd=REPO, capture_output=True, text=True)

    shown = cli("--help")
    assert shown.returncode == 0 and "--out" in shown.stdout and "results.jsonl" in shown.stdout
    done = cli(runs, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "results.csv", "fewshot_accuracy.png", "index.html"}
    failed = cli(tmp_path / "nowhere", "--out", tmp_path / "out2")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1
    assert "Traceback" not in failed.stderr and not (tmp_path / "out2").exists()
