"""The training guide's example rpb_config.yaml ships under conf/guide/ and loads through experiments.guide_config."""

from __future__ import annotations

import warnings

from experiments.cli import GUIDE_EXAMPLE
from experiments.config import CONF_DIR
from experiments.guide_config import compose_guide_config


def test_the_shipped_guide_config_is_the_guides_rpb_config():
    path = CONF_DIR.parent / GUIDE_EXAMPLE  # the path --help and the README give
    assert path == CONF_DIR / "guide" / "rpb_config.yaml" and path.is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # device: auto trains on whatever is there, without a warning
        cfg = compose_guide_config(path, ["tracker=none"])
    m = cfg.model
    assert (cfg.name, cfg.seed, cfg.data.batch_size) == ("relative_position_bias", 42, 32)
    assert (m.embed_dim, m.num_heads, m.head_dim, m.drop_rate, m.attn_drop_rate) == (96, 4, 24, 0.1, 0.1)
    assert (m.rpb.enabled, m.rpb.bias_type, list(m.rpb.window_size)) == (True, "2d", [7, 7])
    assert (m.rpb.learnable, m.rpb.init_std, m.scale) == (True, 0.02, True)
    assert cfg.data.img_size // m.patch_size == 7  # sequence_length 49: the 7x7 token grid
