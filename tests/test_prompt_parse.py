"""The short-prompt parser: synonyms, binding attributes to objects by order, unused words."""

import pytest

from soraj.captions.prompt_parse import StatedObject, parse_prompt
from soraj.data.shapes import dense_caption, parse_dense_caption, split_prompts


def test_binds_attributes_by_order():
    stated = parse_prompt("a red ball and a small blue box going up on gray")
    assert stated.objects == (
        StatedObject(colour="red", shape="circle"),
        StatedObject(colour="blue", shape="square", size="small", motion="moves up"),
    )
    assert stated.background == "gray"
    assert stated.unused == ()


@pytest.mark.parametrize(
    ("prompt", "objects", "background"),
    [
        ("tiny yellow pyramid falling", [("yellow", "triangle", "small", "moves down")], None),
        (
            "big cyan block sliding to the left",
            [("cyan", "square", "large", "moves to the left")],
            None,
        ),
        ("moving right, a green dot", [("green", "circle", None, "moves to the right")], None),
        ("white triangle shape on a dark background", [("white", "triangle", None, None)], "black"),
        ("a violet circle on a grey backdrop", [("purple", "circle", None, None)], "gray"),
        ("red and blue", [("red", None, None, None), ("blue", None, None, None)], None),
        ("a static orange square", [("orange", "square", None, "stays still")], None),
    ],
)
def test_synonyms(prompt, objects, background):
    stated = parse_prompt(prompt)
    assert [tuple(vars(o).values()) for o in stated.objects] == objects
    assert stated.background == background


def test_counts_and_unused_words():
    stated = parse_prompt("cool clip of two shapes lol")
    assert stated.objects == () and stated.count == 2
    assert stated.unused == ("cool", "clip", "lol")


def test_reads_every_dense_caption_exactly():
    for caption in split_prompts("all", n=200, seed=3):
        scene = parse_dense_caption(caption)
        stated = parse_prompt(caption)
        assert stated.background == scene.background
        assert [StatedObject(**vars(o)) for o in scene.objects] == list(stated.objects)
        assert stated.unused == ()
        assert dense_caption(scene) == caption
