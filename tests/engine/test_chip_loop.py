import contextlib
import weakref

import numpy as np

from pointsam_engine import chip_loop
from pointsam_engine.calibration import Clicks, contains_points
from pointsam_engine.chip_loop import DECODE_GROUP, decode_chip
from pointsam_engine.config import SegmentConfig
from pointsam_engine.masks import Prompt
from tests.conftest import SquarePredictor


class CountingPredictor(SquarePredictor):
    """The square stand-in, counting the masks it returned that are still alive."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.alive = self.most_alive = 0

    def predict(self, prompts):
        patches = super().predict(prompts)
        for patch in patches:
            if patch is not None:
                self.alive += 1
                weakref.finalize(patch, self._gone)
        self.most_alive = max(self.most_alive, self.alive)
        return patches

    def _gone(self):
        self.alive -= 1


def _row_of_objects(count: int, spacing: float):
    clicks = [np.array([[20.5 + spacing * k, 128.5]]) for k in range(count)]
    return clicks, [Prompt(c, np.array([1])) for c in clicks]


def _stages(name):
    return contextlib.nullcontext()


def test_a_chip_owning_many_objects_holds_the_raw_masks_of_one_group_at_a_time():
    count = 3 * DECODE_GROUP
    stub = CountingPredictor(half=8, chip_size=2048)
    stub.set_chip(np.zeros((256, 2048, 3), np.uint8))
    clicks, prompts = _row_of_objects(count, 20.0)
    _, kept, _ = decode_chip(stub, prompts, clicks, count, SegmentConfig(), _stages, lambda a, patch: patch.score)
    assert kept == [0.9] * count
    assert stub.most_alive <= 2 * DECODE_GROUP  # a group's first pass and its calibrated masks, no more


def test_objects_in_different_groups_still_calibrate_against_a_held_click():
    count = DECODE_GROUP + 1
    stub = SquarePredictor(half=12, chip_size=2048)
    stub.set_chip(np.zeros((256, 2048, 3), np.uint8))
    clicks, prompts = _row_of_objects(count, 10.0)  # each square holds its neighbours' clicks
    pairs, kept, redone = decode_chip(stub, prompts, clicks, count, SegmentConfig(), _stages, lambda a, patch: patch)
    assert redone == list(range(count))
    # the last object is alone in its group: its mask gave up the first group's last click all the same
    assert contains_points(stub.square(prompts[-1]), clicks[-2]) and not contains_points(kept[-1], clicks[-2])
    assert (DECODE_GROUP - 2, DECODE_GROUP - 1) in pairs and (DECODE_GROUP - 1, DECODE_GROUP) not in pairs


def test_a_chip_calibrated_group_by_group_indexes_its_clicks_once(monkeypatch):
    built = []

    class CountedClicks(Clicks):
        def owners_in(self, boxes):
            if self._tree is None:
                built.append(self)
            return super().owners_in(boxes)

    monkeypatch.setattr(chip_loop, "Clicks", CountedClicks)
    count = 3 * DECODE_GROUP
    stub = SquarePredictor(half=12, chip_size=2048)
    stub.set_chip(np.zeros((256, 2048, 3), np.uint8))
    clicks, prompts = _row_of_objects(count, 10.0)
    _, _, redone = decode_chip(stub, prompts, clicks, count, SegmentConfig(), _stages, lambda a, patch: patch)
    assert redone == list(range(count))  # every group looked neighbours up
    assert len(built) == 1  # in one index of the chip's clicks, not one per group (O(objects²) per chip)


def test_the_chip_loop_decodes_the_predictors_batch_of_prompts_at_a_time_unless_the_options_give_one():
    for option, expected in ((None, 3), (5, 5)):
        stub = SquarePredictor(half=8, chip_size=2048)
        stub.decoder_batch = 3
        stub.set_chip(np.zeros((256, 2048, 3), np.uint8))
        clicks, prompts = _row_of_objects(10, 20.0)
        decode_chip(stub, prompts, clicks, 10, SegmentConfig(decoder_batch=option), _stages, lambda a, patch: patch)
        assert max(len(call) for call in stub.calls) == expected
