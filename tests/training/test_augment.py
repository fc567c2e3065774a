"""Views: the weak ones move image and clicks together; the strong one changes colours only."""

import itertools

import numpy as np
import pytest

from training.augment import Dihedral, strong_view


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
