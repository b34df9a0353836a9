"""config.data.caption_mix: per-sample odds over caption fields, drawn in PrepareExample before
the caption dropout; the empirical mix matches the odds, a seed fixes it, the default changes
nothing, and bad mixes fail with one clear line before any work."""

import grain
import numpy as np
import pytest

from soraj import sharding
from soraj.configs import t2v
from soraj.data.caption_versions import check_caption_mix, check_mix_fields, pick_caption
from soraj.data.packed_pipeline import PackedDataSpec, PrepareExample, caption_from_bytes
from soraj.data.shapes import ShapesSource
from soraj.dit_data import training_data
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec

VAE_DIR = "experiments/shapes/checkpoint/vae"  # the shipped tiny VAE: ft = fs = 4
FIELDS = ("caption", "caption_dense", "caption_original", "caption_short")
NUM_SAMPLES = 3000


class Captioned(grain.sources.RandomAccessDataSource):
    """Images of one latent patch whose caption fields name the field: "dense 7", ..."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        captions = {field: f"{field} {int(index)}" for field in FIELDS}
        return {"video": np.zeros((1, 8, 8, 3), np.uint8), **captions}

    def __repr__(self):
        return "Captioned()"


def spec(**changes):
    settings = dict(
        vae_factors=(4, 4),
        patch_size=(1, 2, 2),
        row_length=4,
        max_segments=1,
        rows_per_batch=1,
        token_budget=4,
        max_frames=1,
        caption_dropout=0.0,
    )
    return PackedDataSpec(**{**settings, **changes})


def prepared(spec_: PackedDataSpec, seed: int = 0, n: int = NUM_SAMPLES) -> list[dict]:
    """n samples of PrepareExample as the pipeline runs it: grain's random_map, its rngs."""
    dataset = grain.MapDataset.source(Captioned()).repeat()
    dataset = dataset.random_map(PrepareExample(spec_), seed=seed)
    return [dataset[i] for i in range(n)]


def chosen_fields(samples: list[dict]) -> list[str]:
    """The field each sample's caption came from ("" for a dropped caption)."""
    return [caption_from_bytes(p["caption"]).rpartition(" ")[0] for p in samples]


def assert_binomial(count: int, n: int, odds: float) -> None:
    """count is within 5 standard deviations of Binomial(n, odds): a false alarm about 1 in
    1.7 million runs, and a miss of a swapped or ignored odds is far outside it."""
    assert abs(count - n * odds) <= 5 * np.sqrt(n * odds * (1 - odds)) + 1e-9, (count, n, odds)


# ---- The mix ----


def test_empirical_mix_matches_the_odds():
    mix = (("caption_dense", 0.7), ("caption_original", 0.25), ("caption_short", 0.05))
    fields = chosen_fields(prepared(spec(caption_mix=mix)))
    for field, odds in mix:
        assert_binomial(fields.count(field), NUM_SAMPLES, odds)
    assert "caption" not in fields  # a field outside the mix never trains


def test_dense_and_original_as_dalle3():
    mix = (("caption_dense", 0.95), ("caption_original", 0.05))
    fields = chosen_fields(prepared(spec(caption_mix=mix)))
    assert_binomial(fields.count("caption_original"), NUM_SAMPLES, 0.05)
    assert fields.count("caption_dense") + fields.count("caption_original") == NUM_SAMPLES


def test_zero_odds_never_chosen():
    mix = (("caption_original", 0.0), ("caption_dense", 1.0), ("caption_short", 0.0))
    assert set(chosen_fields(prepared(spec(caption_mix=mix), n=500))) == {"caption_dense"}


def test_dropout_applies_after_the_mix_at_its_own_rate():
    mix = (("caption_dense", 0.5), ("caption_original", 0.5))
    fields = chosen_fields(prepared(spec(caption_mix=mix, caption_dropout=0.2)))
    assert_binomial(fields.count(""), NUM_SAMPLES, 0.2)
    assert_binomial(fields.count("caption_dense"), NUM_SAMPLES, 0.5 * 0.8)


def test_the_mix_is_deterministic_in_the_seed():
    mix = (("caption_dense", 0.5), ("caption_original", 0.5))
    first = chosen_fields(prepared(spec(caption_mix=mix), seed=3, n=400))
    assert first == chosen_fields(prepared(spec(caption_mix=mix), seed=3, n=400))
    assert first != chosen_fields(prepared(spec(caption_mix=mix), seed=4, n=400))


# ---- The default is today's behaviour ----


def test_default_mix_is_the_caption_field_and_draws_nothing():
    """The default trains on "caption" and consumes no rng draw, so every later draw (dropout,
    native-size plan, token drops) and so every batch is what it was before the mix existed."""
    default = spec(caption_dropout=0.3)
    assert default.caption_mix == (("caption", 1.0),)
    assert t2v.get_config("tiny").data.caption_mix == (("caption", 1.0),)
    example = Captioned()[5]
    for seed in range(200):
        out = PrepareExample(default)(example, np.random.default_rng(seed))
        dropped = np.random.default_rng(seed).random() < 0.3  # the dropout is the first draw
        assert caption_from_bytes(out["caption"]) == ("" if dropped else "caption 5")
    explicit = spec(caption_dropout=0.3, caption_mix=[["caption", 1]])  # a config's lists
    for a, b in zip(prepared(default, n=200), prepared(explicit, n=200), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_pick_caption_one_field_leaves_the_rng_alone():
    rng, untouched = np.random.default_rng(1), np.random.default_rng(1)
    assert pick_caption({"caption": "a"}, (("caption", 1.0),), rng) == "a"
    assert rng.random() == untouched.random()


# ---- Bad mixes ----


@pytest.mark.parametrize(
    "mix, message",
    [
        ((("caption_dense", 0.9), ("caption_original", 0.2)), "sum to 1"),
        ((("caption_dense", 1.5), ("caption_original", -0.5)), r"in \[0, 1\]"),
        ((("caption_dense", 0.5), ("caption_dense", 0.5)), "twice"),
        ((), "at least one"),
        (("caption_dense",), "pairs"),
    ],
)
def test_bad_mix_raises(mix, message):
    with pytest.raises(ValueError, match=message):
        check_caption_mix(mix)
    with pytest.raises(ValueError, match=message):
        spec(caption_mix=mix)


def test_missing_field_names_the_fields_the_records_have():
    source = ShapesSource(4, 1, 16, 16)
    check_mix_fields((("caption_original", 0.5), ("short_caption", 0.5)), source)
    with pytest.raises(ValueError, match="caption_dense") as error:
        check_mix_fields((("caption_dense", 0.95), ("caption_original", 0.05)), source)
    assert "caption, caption_original, short_caption" in str(error.value)
    assert "\n" not in str(error.value)


def test_training_data_checks_the_mix_before_any_work():
    config = t2v.get_config("tiny")
    config.vae_checkpoint = VAE_DIR
    config.text.encoder = "bytes"
    config.data.caption_mix = (("caption_dense", 0.95), ("caption_original", 0.05))
    args = (LatentCodec.load(VAE_DIR), VAE_DIR, TextConfig(**config.text), (1, 2, 2))
    with pytest.raises(ValueError, match="their caption fields: caption, caption_original"):
        training_data(config, *args, sharding.make_mesh())
    config.data.caption_mix = (("caption", 0.5), ("caption_original", 0.4))
    with pytest.raises(ValueError, match="sum to 1"):
        training_data(config, *args, sharding.make_mesh())
