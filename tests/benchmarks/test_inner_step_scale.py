"""GeSSL's per-base inner step (``gessl.config.INNER_LR``) moves every base method's model about as
far as SimCLR's, measured on the real glyphs by ``benchmarks/inner_step_scale.py``; one fixed step
does not."""
import pytest

from benchmarks.inner_step_scale import relative_move
from gessl.config import INNER_LR, resolve_config


def test_each_base_method_s_inner_step_moves_its_model_as_far_as_simclr_s(glyph_root):
    reference = relative_move("simclr", "glyphs", INNER_LR["simclr"], seed=0)["relative_move"]
    for base, alpha in INNER_LR.items():
        move = relative_move(base, "glyphs", alpha, seed=0)["relative_move"]
        assert reference / 1.5 < move < reference * 1.5, (base, move, reference)
    # The defect the table fixes: SimCLR's step moves Barlow Twins' model a hundred times as far.
    assert relative_move("barlow", "glyphs", INNER_LR["simclr"], seed=0)["relative_move"] > 50 * reference


@pytest.mark.parametrize("layers, expected", [
    ({"base": "barlow"}, INNER_LR["barlow"]),                      # the base method's when not given
    ({"base": "barlow", "inner_lr": 0.0}, INNER_LR["barlow"]),     # 0 asks for it
    ({"base": "barlow", "inner_lr": 0.01}, 0.01),                  # a given step is kept
    ({"base": "supervised"}, INNER_LR["simclr"]),                  # bases not in the table: SimCLR's
])
def test_inner_lr_resolves_to_the_base_method_s_unless_given(layers, expected):
    assert resolve_config(layers).inner_lr == expected
