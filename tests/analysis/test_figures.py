"""The report's figures: each written as PNG and PDF, drawn from the stored numbers."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import figures, report
from tests.analysis.conftest import AXES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_written_as_png_and_pdf_and_shown_on_the_page(full_report):
    out, _ = full_report
    page = (out / "index.html").read_text()
    for number, name in enumerate(report.FIGURES, 1):
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000, name
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 300
            assert image.size[0] == figures.WIDTH * figures.DPI
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, name
        assert f'<img src="{name}.png"' in page and f'href="{name}.pdf"' in page
        assert f"<b>Figure {number}.</b>" in page


def recording(monkeypatch):
    made = []
    original = figures.new_figure

    def new_figure(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(figures, "new_figure", new_figure)
    return made


def test_bars_and_error_bars_are_the_stored_means_and_intervals(full_runs, monkeypatch):
    made = recording(monkeypatch)
    df = report.load_results([full_runs])
    figures.fig_fewshot(df, report.Notes())
    fewshot = df[df["protocol"] == "fewshot"]
    for ax in made[0].axes:
        axis = ax.get_title().split(",")[0]
        expected = fewshot[fewshot["axis"] == axis]
        heights = sorted(round(p.get_height(), 6) for p in ax.patches)
        assert heights == sorted(round(v, 6) for v in expected["value"])
        spans = sorted((round((y0 + y1) / 2, 6), round(abs(y1 - y0) / 2, 6))
                       for line in ax.collections for (_, y0), (_, y1) in line.get_segments())
        assert spans == sorted(zip(expected["value"].round(6), expected["ci95"].round(6)))
        chance = [l for l in ax.lines if l.get_linestyle() == "--"]
        assert chance and chance[0].get_ydata()[0] == pytest.approx(20.0)
    assert {ax.get_title().split(",")[0] for ax in made[0].axes} == set(AXES)


def test_crowding_bars_are_one_per_model_with_gaps_noted(full_runs, monkeypatch):
    made = recording(monkeypatch)
    df = report.load_results([full_runs])
    notes = report.Notes()
    figures.fig_crowding(df, notes)
    crowding = df[(df["protocol"] == "crowding")]
    ax = made[0].axes[2]
    assert "crowding\nratio" in ax.get_title()
    expected = crowding[crowding["metric"] == "crowding_ratio"]
    assert sorted(p.get_width() for p in ax.patches) == pytest.approx(sorted(expected["value"]))
    first = made[0].axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == [
        "simclr", "simclr-dsa", "vicreg", "random init (conv4)"]
    bottom, top = first.get_ylim()
    assert top < bottom  # the first model is drawn on top
    assert "figure 4: no crowding metrics for simclr-gessl" in notes


def test_pca_map_matches_an_eigendecomposition_of_the_normalised_features():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6)) * np.array([5, 3, 1, 1, 1, 1]) + 2
    points, labels = figures.project(features, "pca")
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    x = x - x.mean(0)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    top = vectors[:, ::-1][:, :2]
    expected = x @ top
    for i in range(2):  # components are defined up to sign
        sign = np.sign(expected[:, i] @ points[:, i])
        assert points[:, i] == pytest.approx(sign * expected[:, i], abs=1e-9)
    share = values[::-1] / values.sum()
    assert labels == (f"PC1 ({100 * share[0]:.0f}%)", f"PC2 ({100 * share[1]:.0f}%)")


def test_feature_maps_default_to_the_variants_of_a_base_and_a_random_backbone(full_runs):
    df = report.load_results([full_runs])
    samples = report.load_feature_samples(df, report.Notes())
    assert set(samples) == {"simclr", "simclr-dsa", "simclr-gessl", "random init (conv4)"}
    assert report.default_map_models(df, samples) == [
        "simclr", "simclr-dsa", "simclr-gessl", "random init (conv4)"]
    supervised = df[df["model"] == "vicreg"].assign(model="sup", run="sup", base="supervised")
    with_sup = pd.concat([df, supervised], ignore_index=True)
    samples["sup"] = samples["simclr"]
    assert report.default_map_models(with_sup, samples) == [
        "simclr", "simclr-dsa", "simclr-gessl", "sup"]
    features, labels, index = samples["simclr-dsa"]
    saved = np.load(full_runs / "simclr-dsa" / "feature_sample.npz")
    assert np.array_equal(features, saved["features"][0]) and np.array_equal(labels, saved["labels"])


def test_training_curves_show_losses_sigma_and_lr_not_timings(full_runs, monkeypatch):
    df = report.load_results([full_runs])
    metrics = report.load_metrics(df, report.Notes())
    assert figures._curve_quantities(metrics) == ["loss", "dsa_loss", "nt_xent", "sigma_kl", "lr"]
    plain = metrics[metrics["model"] == "simclr"]
    assert figures._curve_quantities(plain) == ["loss", "lr"]  # nt_xent is the whole loss there
    made = recording(monkeypatch)
    figures.fig_training(df, metrics, report.Notes())
    sigma_ax = next(ax for ax in made[0].axes if ax.get_title() == "σ (KL to the target)")
    line, = sigma_ax.lines
    log = metrics[(metrics["model"] == "simclr-gessl") & (metrics["quantity"] == "sigma_kl")]
    assert list(line.get_xdata()) == list(log["step"]) and list(line.get_ydata()) == list(log["value"])
    lr_ax = next(ax for ax in made[0].axes if ax.get_title().startswith("learning rate"))
    assert lr_ax.get_title() == "learning rate (×1e-3)"
    assert max(max(l.get_ydata()) for l in lr_ax.lines) == pytest.approx(1.0)


def test_tsne_without_scikit_learn_falls_back_to_pca_with_a_note(full_runs):
    try:
        import sklearn  # noqa: F401
        pytest.skip("scikit-learn is installed")
    except ImportError:
        pass
    df = report.load_results([full_runs])
    notes = report.Notes()
    samples = report.load_feature_samples(df, notes)
    fig, caption = figures.fig_feature_map(df, samples, ["simclr"], "tsne", notes)
    assert any("t-SNE needs scikit-learn" in n for n in notes) and caption.startswith("PCA")


def test_the_study_figure_draws_each_difference_in_its_setting_and_column_with_its_interval():
    def row(variant, dataset, setting, difference, seeds, ci_seeds, ci_episodes):
        return {"against": "simclr", "dataset": dataset, "budget": "10min", "variant": variant,
                "setting": setting, "seeds": seeds, "difference": difference, "ci95_seeds": ci_seeds,
                "ci95_episodes": ci_episodes}
    table = [row("gessl", "glyphs", "transferability mnist: 5-way 1-shot", -3.0, 3, 1.5, np.nan),
             row("dsa", "glyphs", "transferability mnist: 5-way 1-shot", 2.0, 1, np.nan, 0.7),
             row("gessl", "omniglot-small", "transferability mnist: 5-way 1-shot", 4.0, 3, 2.5, np.nan),
             row("gessl", "glyphs", "transferability mnist: 5-way 5-shot", 9.0, 3, 1.0, np.nan),  # not drawn
             {**row("gessl", "glyphs", "transferability mnist: 5-way 1-shot", 7.0, 3, 1.0, np.nan),
              "against": "random"}]  # not drawn
    fig, caption = figures.fig_study(table, "simclr", lambda setting: setting.upper())
    axes = np.array(fig.axes).reshape(1, 2)
    drawn = [[(c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0], c.lines[2][0].get_segments()[0][:, 0].tolist())
              for c in ax.containers] for ax in axes[0]]
    assert drawn[0] == [(-3.0, 0, [-4.5, -1.5]), (2.0, 1, [1.3, pytest.approx(2.7)])]  # gessl, dsa: over seeds, over episodes
    assert drawn[1] == [(4.0, 0, [1.5, 6.5])]
    assert axes[0, 0].get_ylabel() == "TRANSFERABILITY MNIST: 5-WAY 1-SHOT" and "glyphs" in axes[0, 0].get_title()
    assert "over seeds" in caption
    assert figures.fig_study([table[-1]], "simclr", str) is None
