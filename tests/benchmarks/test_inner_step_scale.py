"""GeSSL's per-base inner step (``gessl.config.INNER_LR``, SimCLR's 0.001 where a base has no entry)
moves no base method's model further than SimCLR's step moves SimCLR's, measured on the real glyphs
by ``benchmarks/inner_step_scale.py``; one fixed step for every base does not."""
import pytest

from benchmarks.inner_step_scale import BASES, relative_move
from gessl.config import INNER_LR, resolve_config


def test_no_base_method_s_inner_step_moves_its_model_further_than_simclr_s(glyph_root):
    reference = relative_move("simclr", "glyphs", INNER_LR["simclr"], seed=0)["relative_move"]
    for base in BASES:
        move = relative_move(base, "glyphs", resolve_config({"base": base}).inner_lr, seed=0)["relative_move"]
        assert move < 1.5 * reference, (base, move, reference)
    # Barlow Twins' own step moves it as far as SimCLR's; SimCLR's step moves it a hundred times as far.
    assert relative_move("barlow", "glyphs", INNER_LR["barlow"], seed=0)["relative_move"] > reference / 1.5
    assert relative_move("barlow", "glyphs", INNER_LR["simclr"], seed=0)["relative_move"] > 50 * reference


@pytest.mark.parametrize("layers, expected", [
    ({"base": "barlow"}, INNER_LR["barlow"]),                      # the base method's when not given
    ({"base": "barlow", "inner_lr": 0.0}, INNER_LR["barlow"]),     # 0 asks for it
    ({"base": "barlow", "inner_lr": 0.01}, 0.01),                  # a given step is kept
    ({"base": "byol"}, INNER_LR["simclr"]),                        # bases without an entry: SimCLR's
])
def test_inner_lr_resolves_to_the_base_method_s_unless_given(layers, expected):
    assert resolve_config(layers).inner_lr == expected
