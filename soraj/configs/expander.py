"""Learned prompt expander config: `--config=soraj/configs/expander.py:tiny` (2-core CPU)."""

import ml_collections

# Sized to finish within about 10 minutes on a 2-core CPU: MiniLM encodes every training prompt
# once (about 10 ms each), then the decoder trains on the cached states.
_PRESETS = {"tiny": dict(num_pairs=8000, total_steps=2000, batch_size=64)}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in _PRESETS:
        raise ValueError(f"unknown expander config {arg!r}; allowed: {sorted(_PRESETS)}")
    preset = _PRESETS[arg]
    config = ml_collections.ConfigDict()
    config.seed = 0
    # (short prompt, dense caption) pairs, each pair from one Shapes training scene
    # (soraj/captions/short_prompts.py); scenes of the "train" split, frames as the demo's.
    config.num_pairs = preset["num_pairs"]
    config.num_frames = 9
    config.model = ml_collections.ConfigDict(
        dict(width=128, depth=3, num_heads=4, mlp_ratio=4, max_length=32, text_max_tokens=32)
    )
    config.batch_size = preset["batch_size"]
    config.total_steps = preset["total_steps"]
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.weight_decay = 0.01
    config.log_every = 50
    config.encode_batch = 256  # prompts per MiniLM call while caching the memory
    return config
