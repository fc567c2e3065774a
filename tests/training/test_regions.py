"""A region's clicks and chips: validation blocks are whole; negatives keep away; the upper bound's own polygons."""

import numpy as np

from pointsam_engine.config import SegmentConfig
from training.regions import background_negatives, block_split, load_region


def test_validation_takes_whole_blocks_and_never_everything():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1000, (400, 2))
    val = block_split(xy, 100.0, 0.2, rng)
    assert 0.15 <= val.mean() <= 0.35
    blocks = [tuple(b) for b in np.floor(xy / 100).astype(int)]
    for b in set(blocks):
        members = val[[i for i, k in enumerate(blocks) if k == b]]
        assert members.all() or not members.any()  # a block is wholly in or wholly out
    single_block = block_split(np.full((5, 2), 10.0), 100.0, 0.5, rng)
    assert not single_block.any()
    assert not block_split(xy, 100.0, 0.0, rng).any()


def test_background_negatives_keep_away_from_clicks_and_masks():
    rng = np.random.default_rng(2)
    clicks = [np.array([[32.0, 32.0]]), np.array([[10.0, 50.0]])]
    exclude = np.zeros((64, 64), bool)
    exclude[:, 40:] = True
    negs = background_negatives(clicks, 64, 20, 8.0, rng, exclude=exclude)
    assert len(negs) == 20
    assert (np.linalg.norm(negs[:, None] - np.vstack(clicks)[None], axis=-1) >= 8.0).all()
    assert (negs[:, 0] < 40).all()
    assert len(background_negatives(clicks, 64, 5, 8.0, rng, exclude=np.ones((64, 64), bool))) == 0


def test_mask_supervised_upper_bound_reads_each_objects_own_polygon(scene):
    region = load_region(0, scene["raster"], scene["points"], SegmentConfig(), 128, val_fraction=0.0,
                         rng=np.random.default_rng(0), truth=str(scene["truth"]))
    checked = 0
    for chip in region.chips:
        assert len(chip.truth) == len(chip.positives)
        for mask, clicks in zip(chip.truth, chip.positives):
            x, y = clicks[0]
            if 0 <= x < 128 and 0 <= y < 128:
                assert mask[int(y), int(x)]  # the polygon holding the click
                checked += 1
        others = np.sum(chip.truth, axis=0)
        assert others.max() <= 1  # truth polygons do not overlap
    assert checked >= len(region.instances)
