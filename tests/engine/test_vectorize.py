import numpy as np
import pytest
import shapely
from affine import Affine

from pointsam_engine.masks import MaskPatch
from pointsam_engine.vectorize import clean_mask, hold_clicks, oriented_boxes, overlapping, simplify_coverage, to_map, trace


def test_clean_mask_keeps_the_clicked_part_and_fills_only_small_holes():
    logits = -np.ones((40, 40), np.float32)
    logits[2:20, 2:20] = 1  # clicked part, with a 2x2 hole and a 6x6 hole
    logits[5:7, 5:7] = -1
    logits[10:16, 10:16] = -1
    logits[30:35, 30:35] = 1  # a speck
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
