"""MaskPatch: an object's logits on a window of the grid; cropping and shifting keep every pixel where it was."""

import numpy as np

from pointsam_engine.masks import MASK_THRESHOLD, MaskPatch, as_half, positive, signed_by


def _patch():
    logits = np.full((10, 12), -3.0, np.float32)
    logits[3:6, 4:9] = 2.0  # the mask: rows 3-5, columns 4-8
    logits[7, 1] = MASK_THRESHOLD  # on the threshold: not in the mask
    return MaskPatch(100, 200, logits, 0.9)


def _cells(patch):
    rows, cols = np.nonzero(patch.mask)
    return set(zip((rows + patch.row0).tolist(), (cols + patch.col0).tolist()))


def test_the_mask_is_the_logits_above_the_threshold():
    patch = _patch()
    assert patch.shape == (10, 12) and patch.mask.sum() == 15 and not patch.mask[7, 1]


def test_cropping_cuts_to_the_mask_and_keeps_each_pixel_on_the_grid():
    patch = _patch()
    cropped = patch.cropped()
    assert (cropped.row0, cropped.col0, cropped.shape) == (103, 204, (3, 5))
    assert _cells(cropped) == _cells(patch) and cropped.mask.all() and cropped.score == 0.9
    assert np.shares_memory(cropped.logits, patch.logits)  # a view: cropping copies nothing


def test_cropping_an_empty_mask_gives_an_empty_patch_at_the_same_place():
    patch = MaskPatch(5, 6, -np.ones((4, 4), np.float32), 0.2)
    cropped = patch.cropped()
    assert cropped.shape == (0, 0) and (cropped.row0, cropped.col0) == (5, 6) and _cells(cropped) == set()


def test_shifting_moves_the_window_not_the_logits():
    patch = _patch()
    moved = patch.shifted(-100, 7)
    assert (moved.row0, moved.col0) == (0, 207) and moved.logits is patch.logits and moved.score == patch.score
    assert _cells(moved) == {(r - 100, c + 7) for r, c in _cells(patch)}
    assert (patch.row0, patch.col0) == (100, 200)  # the original stays


def _half_logits():
    """Every finite float16 and the infinities, zeros of both signs among them, as SAM's logits can be."""
    bits = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    values = bits.view(np.float16)
    return values[~np.isnan(values)]


def test_the_mask_of_float16_logits_is_the_float_comparison_on_every_value():
    logits = _half_logits()
    assert np.array_equal(positive(logits), logits.astype(np.float32) > MASK_THRESHOLD)
    assert np.array_equal(MaskPatch(0, 0, logits.reshape(1, -1), 0.5).mask[0], positive(logits))


def test_signing_logits_by_a_mask_keeps_them_bit_for_bit_as_the_float_rule_would():
    near = np.random.default_rng(1).normal(0, 2e-3, 20000)  # values around the margin
    half = np.concatenate([_half_logits(), near.astype(np.float16)])
    single = np.concatenate([near, [7e4, -7e4, 65519.0, 65520.0, 1e-3, -1e-3]]).astype(np.float32)  # float16 rounds these
    for given in (half, single):
        keep = np.random.default_rng(0).random(len(given)) < 0.5
        with np.errstate(over="ignore"):  # float32 past float16's range rounds to an infinity
            expected = np.where(keep, np.maximum(given, 1e-3), np.minimum(given, -1e-3)).astype(np.float16)
            signed = signed_by(given, keep)
        assert signed.dtype == np.float16 and np.array_equal(signed.view(np.int16), expected.view(np.int16))
        assert np.array_equal(positive(signed), keep)


def test_logits_held_as_float16_have_the_bits_numpy_casts_them_to():
    rng = np.random.default_rng(2)
    # every float16 value, values between it and its neighbours (the midpoints, where rounding ties, among
    # them), past float16's range, below its subnormals, both zeros
    finite = _half_logits()[np.isfinite(_half_logits())]
    with np.errstate(over="ignore"):  # the largest float16's gap is an infinity
        halves, gaps = finite.astype(np.float32), np.abs(np.spacing(finite)).astype(np.float32)
    steps = np.concatenate([gaps, -gaps]) * rng.choice([0.5, 0.25, 0.75], 2 * len(halves)).astype(np.float32)
    values = np.concatenate([halves, np.tile(halves, 2) + steps, [7e4, -7e4, 65519.0, 65520.0, 1e-9, -0.0],
                             rng.normal(0, 30, 10000)]).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    held = as_half(values)
    assert held.dtype == np.float16 and np.array_equal(held.view(np.int16), expected.view(np.int16))
    grid = values[:40000].reshape(200, 200)[5:150:3, ::7]  # a strided window, as a crop of a chip's logits
    with np.errstate(over="ignore"):
        assert np.array_equal(as_half(grid).view(np.int16), grid.astype(np.float16).view(np.int16))
    for given in (expected[:10], values[:1000].astype(np.float64), values[:1000][::-1]):  # as numpy casts them too
        with np.errstate(over="ignore"):
            assert np.array_equal(as_half(given).view(np.int16), given.astype(np.float16).view(np.int16))
        assert not np.shares_memory(as_half(given), given)
