"""The stated-attribute probe against the full shapes probe on rendered clips."""

import pytest

from soraj.captions.prompt_parse import StatedObject
from soraj.data.shapes import COLOURS, SHAPES, ShapesSource, parse_dense_caption
from soraj.eval.shapes_probe import score_video
from soraj.eval.stated_probe import score_stated


@pytest.fixture(scope="module")
def clips():
    source = ShapesSource(40, 9, 32, 32, seed=11)
    return [source[i] for i in range(len(source))]


def stated_of(scene, size=True, motion=True):
    return [
        StatedObject(o.colour, o.shape, o.size if size else None, o.motion if motion else None)
        for o in scene.objects
    ]


def test_everything_stated_equals_the_full_probe(clips):
    for clip in clips:
        scene = parse_dense_caption(clip["caption"])
        full = score_video(clip["video"], clip["caption"])
        stated = score_stated(clip["video"], stated_of(scene), scene.background)
        assert stated["fully_right"] == float(full["overall"] == 1.0)
        assert stated["right"] == pytest.approx(full["overall"])


def test_stating_less_never_scores_lower(clips):
    for clip in clips:
        scene = parse_dense_caption(clip["caption"])
        full = score_stated(clip["video"], stated_of(scene), scene.background)
        less = score_stated(clip["video"], stated_of(scene, size=False, motion=False), None)
        assert less["fully_right"] >= full["fully_right"]
        assert less["checks"] == 2 * len(scene.objects)


def test_a_wrong_statement_fails(clips):
    for clip in clips[:10]:
        scene = parse_dense_caption(clip["caption"])
        obj = scene.objects[0]
        absent = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
        wrong_colour = [StatedObject(absent, obj.shape, obj.size, None)]
        assert score_stated(clip["video"], wrong_colour, None)["fully_right"] == 0.0
        other = next(s for s in SHAPES if s != obj.shape)
        wrong_shape = [StatedObject(obj.colour, other, obj.size, None)]
        assert score_stated(clip["video"], wrong_shape, None)["fully_right"] == 0.0
    with pytest.raises(ValueError, match="needs a stated colour and shape"):
        score_stated(clips[0]["video"], [StatedObject(None, "circle")], None)
