"""Training material: views keep image and clicks aligned; validation blocks are whole; negatives keep away."""

import itertools

import numpy as np
import pytest

from training.augment import Dihedral, strong_view
from training.regions import background_negatives, block_split


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_every_weak_view_moves_image_and_clicks_together(flags):
    view, size = Dihedral(*flags), 16
    image = np.zeros((size, size, 3), np.uint8)
    row, col = 3, 11
    image[row, col] = 255
    moved = view.image(image)
    (x, y), = view.points(np.array([[col + 0.5, row + 0.5]]), size)
    assert moved[int(y), int(x), 0] == 255 and moved.sum() == 3 * 255


def test_strong_view_changes_colours_not_geometry():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 10:30] = (180, 120, 60)
    views = [strong_view(image, rng, p=1.0) for _ in range(5)]
    for v in views:
        assert v.shape == image.shape and v.dtype == np.uint8 and v.flags.writeable
    assert any(not np.array_equal(v, image) for v in views)


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
