from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize
from scipy import ndimage

from pointsam_engine import chip_loop
from pointsam_engine.calibration import resolve_overlaps
from pointsam_engine.chip_loop import clean_patch
from pointsam_engine.masks import MaskPatch
from pointsam_engine.vectorize import (
    clean_mask,
    hold_clicks,
    oriented_boxes,
    overlapping,
    simplify_coverage,
    to_map,
    trace,
    trace_logits,
    with_vertices,
    without_slivers,
)
from tests.conftest import SHARED_DATA
from tests.engine.test_contours import reference_outline, same_vertices

TRANSFORM = Affine(0.5, 0, 1000, 0, -0.5, 5000)


def _part_with_holes_and_a_speck() -> np.ndarray:
    logits = -np.ones((40, 40), np.float32)
    logits[2:20, 2:20] = 1  # clicked part, with a 2x2 hole and a 6x6 hole
    logits[5:7, 5:7] = -1
    logits[10:16, 10:16] = -1
    logits[30:35, 30:35] = 1  # a speck
    return logits


def test_clean_mask_keeps_the_clicked_part_and_fills_only_small_holes():
    logits = _part_with_holes_and_a_speck()
    patch = MaskPatch(100, 200, logits, 0.8)
    keep = clean_mask(patch, np.array([[203.5, 103.5]]), max_hole_px=10)
    assert not keep[30:35, 30:35].any()
    assert keep[5:7, 5:7].all() and not keep[10:16, 10:16].any()
    missed = clean_mask(patch, np.array([[239.5, 139.5]]), max_hole_px=0)  # click on no part: keep the largest
    assert missed[2:4, 2:4].all() and not missed[30:35, 30:35].any()


def test_trace_and_transform_give_map_polygons_with_exact_pixel_area():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    geom = trace(mask, 100, 200)
    assert geom.area == 18 and geom.bounds == (203, 102, 209, 105)
    transform = Affine(0.5, 0, 1000, 0, -0.5, 5000)
    mapped = to_map([geom], transform)[0]
    assert mapped.area == pytest.approx(18 * 0.25)
    assert mapped.bounds == pytest.approx((1101.5, 4947.5, 1104.5, 4949.0))


def test_a_sliver_that_collapses_in_map_coordinates_is_dropped_and_slivers_can_be_removed():
    """Two vertices 1e-12 pixel apart are distinct on the grid and one point at 733,000 m: the sliver goes."""
    needle = shapely.Polygon([(593.83, 426.545), (593.83 + 1e-12, 426.545), (594.0, 426.935)])
    square = shapely.box(600, 420, 610, 430)
    geom = shapely.MultiPolygon([needle, square])
    assert geom.is_valid
    mapped = to_map([geom], Affine(0.5, 0, 733601, 0, -0.5, 3725139))[0]
    assert mapped.is_valid and mapped.area == pytest.approx(25)
    assert without_slivers(geom).equals(square) and without_slivers(needle) is None


def test_coverage_simplification_keeps_neighbours_apart():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 4, (12, 12)), 5, axis=0), 5, axis=1)
    geoms = [trace(labels == k, 0, 0) for k in range(4)]
    simplified = simplify_coverage(np.array(geoms, dtype=object), 3.0)
    assert overlapping(simplified) == []
    assert all(g.is_valid for g in simplified)
    assert sum(g.area for g in simplified) == pytest.approx(60 * 60, rel=0.02)


def test_a_click_given_back_never_takes_a_neighbours_own_click_pixel():
    """Two clicks in one pixel: the object that lost the pixel does not take it back from the other object's
    click (no overlap); a pixel held by no other click is given back."""
    a, b = shapely.box(0, 0, 4, 4), shapely.box(4, 0, 8, 4)
    masks = np.array([shapely.box(0, 0, 5, 4), b], dtype=object)  # a's mask held the pixel (4..5, 1..2)
    click = np.array([[4.5, 1.5]])
    pixel = np.array([shapely.box(4, 1, 5, 2)], dtype=object)
    geoms, holds = hold_clicks(np.array([a, b], dtype=object), masks, [click, click], [pixel, pixel])
    assert geoms[1].equals(b) and geoms[0].equals(a)
    assert holds.tolist() == [True, True]
    alone, _ = hold_clicks(np.array([a, b], dtype=object), masks, [click, np.array([[6.5, 1.5]])],
                           [pixel, np.array([shapely.box(6, 1, 7, 2)], dtype=object)])
    assert alone[0].contains(shapely.points(click)[0]) and not alone[1].intersects(pixel[0].buffer(-0.1))


def _patch(field: np.ndarray, row0: int = 0, col0: int = 0) -> MaskPatch:
    return MaskPatch(row0, col0, field.astype(np.float16), 0.9)


def test_two_touching_objects_share_their_wall_vertex_for_vertex_and_never_overlap():
    """Two overlapping discs settled to the higher logit: the wall between them has the same vertices in
    both outlines, before and after coverage simplification in map coordinates."""
    yy, xx = np.mgrid[0:60, 0:80] + 0.5
    patches = [_patch(14 - np.hypot(xx - 25.3, yy - 30.1)), _patch(16 - np.hypot(xx - 52.6, yy - 28.7))]
    assert resolve_overlaps(patches) == {(0, 1)}
    outlines = trace_logits({k: (p, p.mask) for k, p in enumerate(patches)})
    a, b = outlines[0], outlines[1]
    wall = {tuple(xy) for xy in shapely.get_coordinates(a)} & {tuple(xy) for xy in shapely.get_coordinates(b)}
    assert len(wall) >= 10  # the discs meet over 13 rows
    assert overlapping(np.array([a, b], dtype=object)) == []
    shared = shapely.intersection(a.boundary, b.boundary)
    assert shared.length > 10 and shapely.intersection(a, b).area == 0
    simplified = simplify_coverage(to_map([a, b], TRANSFORM), 0.5)
    assert overlapping(simplified) == []
    assert shapely.intersection(simplified[0].boundary, simplified[1].boundary).length == \
        pytest.approx(shared.length * 0.5, rel=0.05)  # the wall is still shared, not two near copies


def test_a_rotated_rectangle_comes_out_with_straight_edges():
    yy, xx = np.mgrid[0:60, 0:60] + 0.5
    angle = np.radians(30)
    u = (xx - 30.3) * np.cos(angle) + (yy - 29.8) * np.sin(angle)
    v = -(xx - 30.3) * np.sin(angle) + (yy - 29.8) * np.cos(angle)
    patch = _patch(np.minimum(18 - abs(u), 9 - abs(v)))  # signed distance inside a 36 x 18 rectangle
    sub = simplify_coverage(np.array([trace_logits({0: (patch, patch.mask)})[0]], dtype=object), 1.0)[0]
    stair = simplify_coverage(np.array([trace(patch.mask, 0, 0)], dtype=object), 1.0)[0]
    xy = np.asarray(sub.exterior.coords)
    sides = np.diff(xy, axis=0)
    lengths = np.hypot(sides[:, 0], sides[:, 1])
    long_sides = sides[lengths > 5]
    angles = np.degrees(np.arctan2(long_sides[:, 1], long_sides[:, 0])) % 90
    # four straight sides along the rectangle, each joined by a corner cut under a pixel (the staircase: 30)
    assert len(xy) - 1 <= 8 < len(stair.exterior.coords) - 1
    assert len(long_sides) == 4 and np.abs(angles - 30).max() < 1.0
    assert lengths[lengths > 5].sum() > 0.9 * 2 * (36 + 18) and sub.area == pytest.approx(36 * 18, rel=0.01)


def test_the_outline_keeps_the_clicked_part_and_its_click_and_fills_only_small_holes():
    logits = _part_with_holes_and_a_speck()
    click = np.array([[219.95, 119.95]])  # the far corner of the part's corner pixel
    cleaned = clean_patch(MaskPatch(100, 200, logits, 0.8), click, max_hole_px=10)
    geom = trace_logits({0: (cleaned, cleaned.mask)})[0]
    assert geom.geom_type == "Polygon" and len(geom.interiors) == 1  # the speck dropped, the small hole filled
    assert shapely.Polygon(geom.interiors[0]).area == pytest.approx(36, abs=1)
    assert geom.contains(shapely.Point(click[0]))


def test_on_a_real_chip_the_outlines_hold_exactly_the_bundled_models_mask_pixels(tmp_path, monkeypatch):
    """Kampala's dense chip with the bundled model: rasterized at pixel centres each sub-pixel outline is its
    settled mask, pixel for pixel; as polygons the two differ only by the sub-pixel edge (IoU about 0.95)."""
    import geopandas as gpd

    from pointsam_engine import segment
    from pointsam_engine.config import SegmentConfig
    from pointsam_engine.pipeline import make_predictor
    from training.realdata import chip_cases

    kampala = SHARED_DATA / "A_buildings_georef" / "hotosm_oam_kampala"
    chips = sorted(Path(kampala / "val" / "chips").glob("*-19.tif")) if kampala.is_dir() else []
    if not chips:
        pytest.skip(f"the Kampala chips are absent from {SHARED_DATA.resolve()}")
    chip, _, points = next(chip_cases(chips[:1], gpd.read_file(kampala / "chips_labels_all.geojson"), tmp_path, "k"))
    traced = []

    def recording(objects, context=None):
        out = trace_logits(objects, context)
        traced.extend((patch, keep, out[i]) for i, (patch, keep) in objects.items() if keep.any())
        return out

    monkeypatch.setattr(chip_loop, "trace_logits", recording)
    segment(chip, points, None, predictor=make_predictor(SegmentConfig(device="cpu")))
    assert len(traced) > 50
    ious = []
    for patch, keep, geom in traced:
        burnt = rasterize([geom], out_shape=keep.shape, transform=Affine.translation(patch.col0, patch.row0))
        assert (burnt.astype(bool) == keep).all()
        stair = trace(keep, patch.row0, patch.col0)
        ious.append(geom.intersection(stair).area / geom.union(stair).area)
    assert np.median(ious) > 0.93 and np.percentile(ious, 10) > 0.85


def test_the_oriented_box_of_scattered_parts_far_from_the_origin_holds_them():
    """Parts of one ship on an HRSID scene (UTM metres): GEOS leaves a vertex ~1e-10 m outside their rotated
    rectangle, and a buffer that small, 2.5e6 m from the origin, comes back empty."""
    parts = [(440, 828, 444, 832), (628, 836, 632, 840), (568, 796, 572, 800), (696, 772, 700, 776),
             (436, 764, 440, 768), (760, 600, 764, 604), (764, 592, 768, 596), (760, 576, 764, 580),
             (628, 580, 632, 584), (52, 564, 56, 568), (700, 520, 704, 524), (56, 460, 60, 464), (440, 452, 444, 456),
             (436, 444, 440, 452), (444, 392, 448, 396), (52, 324, 56, 328), (756, 316, 764, 320),
             (248, 260, 252, 264), (188, 268, 192, 272)]
    geom = shapely.MultiPolygon([shapely.box(400000 + x0, 2499000 + y0, 400000 + x1, 2499000 + y1)
                                 for x0, y0, x1, y1 in parts])
    box = oriented_boxes(np.array([geom], dtype=object))[0]
    assert not box.is_empty and box.covers(geom)
    assert box.area < 1.001 * shapely.oriented_envelope(geom).area


def test_points_on_an_outlines_edges_become_its_vertices_and_others_change_nothing():
    """A square with a hole, and a second part: a point a few ulps off an edge goes into that edge (in order
    along it), one as near an edge's end takes that vertex's place, and points far away, already vertices or
    in another part's box change nothing there."""
    square = shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
    geom = shapely.MultiPolygon([square, shapely.box(20, 0, 22, 2)])
    points = np.array([(7.0, 1e-12), (3.0, -1e-12), (10.0, 10 + 1e-9), (5.0, 4.0 + 1e-12), (5.0, 5.0), (6.0, 6.0),
                       (21.0, 3.0)])
    out = with_vertices(geom, points, 1e-6)
    exterior = shapely.get_coordinates(out.geoms[0].exterior)
    assert [tuple(c) for c in exterior[:4]] == [(0, 0), (3.0, -1e-12), (7.0, 1e-12), (10, 0)]
    assert (10.0, 10 + 1e-9) in map(tuple, exterior) and (10.0, 10.0) not in map(tuple, exterior)
    assert (5.0, 4.0 + 1e-12) in map(tuple, shapely.get_coordinates(out.geoms[0].interiors[0]))
    assert out.geoms[1].equals_exact(geom.geoms[1], 0) and out.is_valid
    assert shapely.get_num_coordinates(out) == shapely.get_num_coordinates(geom) + 3
    assert abs(out.area - geom.area) < 1e-8


def _reference_trace_logits(objects, context=None):
    """trace_logits as it stood before all objects were traced in one pass: one field and one marching
    squares per object (the reference the one pass must match, context patches' new logits included)."""
    out = {i: None for i in objects}
    patches = [p for p, _ in objects.values()]
    r0, c0 = min(p.row0 for p in patches) - 1, min(p.col0 for p in patches) - 1
    r1, c1 = max(p.row0 + p.shape[0] for p in patches) + 1, max(p.col0 + p.shape[1] for p in patches) + 1
    labels, strength = np.zeros((r1 - r0, c1 - c0), np.int32), np.zeros((r1 - r0, c1 - c0))

    def overlap(p):  # the window of a patch in the raster and in the patch, clipped to the raster
        top, left = max(p.row0, r0), max(p.col0, c0)
        bottom, right = max(min(p.row0 + p.shape[0], r1), top), max(min(p.col0 + p.shape[1], c1), left)
        return ((slice(top - r0, bottom - r0), slice(left - c0, right - c0)),
                (slice(top - p.row0, bottom - p.row0), slice(left - p.col0, right - p.col0)))

    ids, near = list(objects), [k for k in (context or {}) if k not in objects]
    for n, (patch, keep) in enumerate([objects[i] for i in ids] + [context[k] for k in near], 1):
        grid, local = overlap(patch)
        labels[grid][keep[local]] = n
        strength[grid][keep[local]] = np.maximum(patch.logits[local][keep[local]], 0)
    for patch, _ in (context[k] for k in near):
        grid, local = overlap(patch)
        traced = (labels[grid] >= 1) & (labels[grid] <= len(ids))
        patch.logits[local][traced] = -strength[grid][traced]
    for n, i in enumerate(ids, 1):
        patch, keep = objects[i]
        window = (slice(patch.row0 - r0 - 1, patch.row0 - r0 + keep.shape[0] + 1),
                  slice(patch.col0 - c0 - 1, patch.col0 - c0 + keep.shape[1] + 1))
        own = np.full(labels[window].shape, np.nan)
        own[1:-1, 1:-1] = np.minimum(patch.logits, 0)
        lab, other = labels[window], strength[window]
        field = np.where(lab == n, other, np.where(lab == 0, own, -other))
        out[i] = reference_outline(lab == n, field, patch.row0 - 1, patch.col0 - 1)
    return out


def _random_scene(rng):
    """Objects (and settled neighbours as context) that share no pixel but touch, with holes, diagonal pixels,
    windows that overlap and end on the object's edge, kept pixels the model left out, positive logits
    outside the kept pixels, an empty object; float16 and float32 logits."""
    h, w, count = rng.integers(8, 40), rng.integers(8, 40), rng.integers(1, 14)
    fields = ndimage.gaussian_filter(rng.normal(size=(count, h, w)), (0, 2, 2))
    regions = np.where(fields.max(axis=0) > rng.uniform(0, 0.2), fields.argmax(axis=0) + 1, 0)
    regions[rng.random((h, w)) < 0.05] = 0  # holes and diagonal pixels
    row0, col0 = rng.integers(-30, 30, 2)
    patches = {}
    for k in range(1, count + 1):
        rows, cols = np.nonzero(regions == k)
        if not len(rows):
            rows, cols = rng.integers(0, h, 1), rng.integers(0, w, 1)
        top, left = rows.min() - rng.integers(0, 3), cols.min() - rng.integers(0, 3)
        bottom, right = rows.max() + 1 + rng.integers(0, 3), cols.max() + 1 + rng.integers(0, 3)
        yy, xx = np.mgrid[top:bottom, left:right]
        own = np.zeros(yy.shape, bool)
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        own[valid] = regions[yy[valid], xx[valid]] == k
        logits = np.abs(rng.normal(size=own.shape)) * np.where(own, 1, -1) * (rng.random(own.shape) > 0.05)
        logits[rng.random(own.shape) < 0.1] *= -1
        dtype = np.float16 if k % 2 else np.float32
        patches[k] = MaskPatch(int(row0 + top), int(col0 + left), logits.astype(dtype), 0.9), own
    keys = list(patches)
    rng.shuffle(keys)
    n_context = rng.integers(0, len(keys))
    objects = {k: patches[k] for k in keys[n_context:]}
    context = {k: patches[k] for k in keys[:n_context]}
    if rng.random() < 0.3:
        objects[keys[-1]] = (objects[keys[-1]][0], np.zeros_like(objects[keys[-1]][1]))  # an empty object
    if context and rng.random() < 0.3:
        context[keys[-1]] = objects[keys[-1]]  # one traced here is left out of the context
    return objects, context


def _copied(patches):
    return {k: (MaskPatch(p.row0, p.col0, p.logits.copy(), p.score), keep.copy()) for k, (p, keep) in patches.items()}


def test_tracing_all_objects_in_one_pass_matches_tracing_each_alone_vertex_for_vertex():
    """Random scenes of touching objects and context: every outline has the same vertices, bit for bit and in
    the same order, as the per-object tracing, and the context patches get the same logits."""
    rng = np.random.default_rng(3)
    for seed in range(150):
        objects, context = _random_scene(rng)
        ref_objects, ref_context = _copied(objects), _copied(context)
        out, ref = trace_logits(objects, context), _reference_trace_logits(ref_objects, ref_context)
        assert out.keys() == ref.keys()
        for i in out:
            assert same_vertices(out[i], ref[i]), (seed, i)
        for k in context:
            assert np.array_equal(context[k][0].logits, ref_context[k][0].logits), (seed, k)
            assert context[k][0].logits.dtype == ref_context[k][0].logits.dtype


def test_tracing_many_wide_windows_costs_memory_by_the_grid_not_by_the_windows():
    """Untrained masks give each object a window over most of its chip: 196 windows of 512² over one 512² grid
    (51 M window pixels), each object keeping a small square. Listing every window pixel took over 500 MB."""
    import tracemalloc

    rng = np.random.default_rng(5)
    objects = {}
    for k in range(14 * 14):
        logits = rng.normal(-2, 1, (512, 512)).astype(np.float16)
        keep = np.zeros((512, 512), dtype=bool)
        r, c = divmod(k, 14)
        keep[2 + 36 * r:30 + 36 * r, 2 + 36 * c:30 + 36 * c] = True
        logits[keep] = 3
        objects[k] = (MaskPatch(0, 0, logits, 0.9), keep)
    tracemalloc.start()
    try:
        traced = trace_logits(objects)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(traced[k] is not None and traced[k].area > 27 ** 2 for k in objects)
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MB"
