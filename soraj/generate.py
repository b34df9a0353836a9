"""Prompt → video: load an exported DiT + VAE, solve the flow ODE with guidance, decode (the
files are written by video_files.py)."""

import contextlib
import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj import exports
from soraj.diffusion.timesteps import TimeShift, check_static_count
from soraj.generate_class import class_labels
from soraj.generate_packed import check_rows, request_noise, sample_many_tokens
from soraj.models import patching
from soraj.models.conditioning import TextConfig, init_text_params, segment_inputs
from soraj.models.dit import DiT, DiTConfig
from soraj.models.latent_codec import LatentCodec, stored_factors
from soraj.sample_rows import sample_rows
from soraj.sampling_progress import StepProgress, status

# ---- Locating checkpoints -------------------------------------------------------------------


def resolve_bundle(directory: str | Path) -> Path:
    """The generation bundle at directory: the folder holding a DiT export as dit/ and the VAE
    it was trained on as vae/. The DiT export is looked for as exports.find_export looks (the
    bundle itself, or a `soraj train` workdir whose export/ is one)."""
    dit = exports.find_export(directory, "dit")
    bundle = dit.parent
    if dit.name != "dit":
        raise exports.BundleError(
            f"{dit} is a DiT export outside a bundle: generation needs the folder holding it "
            "as dit/ beside its VAE as vae/"
        )
    if not exports.is_export(bundle / "vae"):
        raise exports.BundleError(
            f"no VAE export beside the DiT export {dit}: expected {bundle / 'vae'} with "
            f"{exports.EXPORT_CONFIG} and {exports.EXPORT_PARAMS}/ (`soraj train` copies it there)"
        )
    exports.load_export_config(bundle / "vae", "vae")  # refuses another kind or a damaged file
    return bundle


def dit_config_from_dict(fields: dict) -> DiTConfig:
    """The DiTConfig an export stored. Exports written before DiTConfig had `modulation`
    hold per-block, per-token adaLN params, which is what "per_token" builds."""
    fields = {"modulation": "per_token", **fields}
    return DiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


@dataclasses.dataclass(frozen=True)
class BundleGeometry:
    """What a request is checked against before any weights are loaded."""

    temporal_factor: int
    spatial_factor: int
    patch_size: tuple[int, int, int]

    @classmethod
    def read(cls, bundle: Path) -> "BundleGeometry":
        vae = exports.load_export_config(bundle / "vae", "vae", required=("vae_config",))
        dit = exports.load_export_config(bundle / "dit", "dit", required=("dit_config",))
        with exports.config_errors(bundle / "vae"):
            ft, fs = stored_factors(vae)
        with exports.config_errors(bundle / "dit"):
            patch_size = tuple(dit["dit_config"]["patch_size"])
        return cls(ft, fs, patch_size)

    def check(self, frames: int, height: int, width: int):
        pt, ph, pw = self.patch_size
        ft, fs = self.temporal_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % ft or ((frames - 1) // ft + 1) % pt:
            raise ValueError(
                f"--frames must be 1 + {ft}·k (k ≥ 0) for this checkpoint's VAE "
                f"(1, {1 + ft}, {1 + 2 * ft}, {1 + 3 * ft}, ...), got {frames}"
            )
        for name, size, patch in (("height", height, ph), ("width", width, pw)):
            if size < fs * patch or size % (fs * patch):
                raise ValueError(
                    f"--{name} must be a positive multiple of {fs * patch} (VAE factor {fs} × "
                    f"patch {patch}), e.g. {fs * patch}, {2 * fs * patch}, {4 * fs * patch}; "
                    f"got {size}"
                )


# ---- The generator --------------------------------------------------------------------------


def single_request_rows(noise, grid, shift: float, conditioning: dict) -> dict:
    """sample_rows inputs for B requests of one patch grid, one request per row (no padding):
    noise (B, N, P); conditioning holds text (B, 1, M, E), text_mask, null_text (M, E) and
    null_mask (M,), or labels (B, 1)."""
    batch, num_tokens = noise.shape[:2]
    return {
        "noise": noise,
        "coords": jnp.broadcast_to(patching.patch_coords(grid), (batch, num_tokens, 3)),
        "segment_ids": jnp.ones((batch, num_tokens), jnp.int32),
        "shift": jnp.full((batch, num_tokens), shift, jnp.float32),
        **{k: jnp.asarray(v) for k, v in conditioning.items()},
    }


class TimedSampler:
    """sample_rows compiled ahead of time once per input shape, so a call reports its
    compile time apart from its sampling time (`timings`). With `report` (what `soraj
    generate` uses), it says on stderr when it compiles and shows a bar over the steps."""

    def __init__(self, report: bool = False):
        self.compiled, self.timings, self.report = {}, {}, report

    def __call__(self, params, rows, guidance, *, dit, text_config, num_steps, window=None):
        static = dict(
            dit=dit,
            text_config=text_config,
            num_steps=num_steps,
            window=window,
            report_steps=self.report,
        )
        shapes = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(rows.items()))
        key = (shapes, num_steps, window, id(dit), self.report)
        started = time.perf_counter()
        if key not in self.compiled:
            if self.report:
                batch, length = rows["noise"].shape[:2]
                status(f"compiling the sampler ({batch} × {length} tokens, {num_steps} steps)")
            lowered = sample_rows.lower(params, rows, guidance, **static)
            self.compiled[key] = lowered.compile()
            if self.report:
                status(f"compiled in {time.perf_counter() - started:.1f} s")
        compiled_at = time.perf_counter()
        progress = StepProgress(num_steps) if self.report else contextlib.nullcontext()
        with progress:
            tokens = jax.block_until_ready(self.compiled[key](params, rows, guidance))
        sampled_at = time.perf_counter()
        self.timings = {
            "compile_seconds": compiled_at - started,
            "sampling_seconds": sampled_at - compiled_at,
            "seconds_per_step": (sampled_at - compiled_at) / num_steps,
        }
        return tokens


@dataclasses.dataclass
class Generator:
    codec: LatentCodec
    dit: DiT
    params: dict  # {"dit": ...} plus {"text": ...} for a trainable text encoder
    text_config: TextConfig
    text_encoder: object  # the host side of the text encoder (None for a class-label model)
    class_names: tuple = ()  # a class-conditional model's labels, in label order
    # How training shifted t; exports from before it was stored were all trained unshifted.
    time_shift: TimeShift = TimeShift()
    sampler: TimedSampler = dataclasses.field(default_factory=TimedSampler)

    @classmethod
    def load(cls, directory: str | Path) -> "Generator":
        bundle = resolve_bundle(directory)
        codec = LatentCodec.load(bundle / "vae")
        stored = exports.load_export_config(bundle / "dit", "dit", required=("dit_config", "text"))
        with exports.config_errors(bundle / "dit"):
            dit = DiT(dit_config_from_dict(stored["dit_config"]))
            text_config = TextConfig(**stored["text"])
            time_shift = TimeShift(**stored.get("time_shift", {}))
            classes = tuple(stored["classes"]) if dit.config.conditioning == "class" else ()
        abstract = jax.eval_shape(lambda: init_params(dit, text_config, jax.random.key(0)))
        params, _ = exports.load_export(bundle / "dit", abstract)
        if dit.config.conditioning == "class":
            return cls(codec, dit, params, text_config, None, classes, time_shift)
        return cls(codec, dit, params, text_config, text_config.host_encoder(), (), time_shift)

    @functools.cached_property
    def decode(self):
        """The VAE decoder, jitted once: a jax.jit of the bound method made anew on each call
        would compile anew each time (2.5 s a window on a 2-core CPU)."""
        return jax.jit(self.codec.decode)

    def text_conditioning(self, prompts) -> dict:
        """single_request_rows' text inputs for one prompt per row, and the null text."""
        text, text_mask = segment_inputs(self.text_encoder, prompts)  # (B, 1, M, E), (B, 1, M)
        null_text, null_mask = segment_inputs(self.text_encoder, [""])
        return dict(
            text=text, text_mask=text_mask, null_text=null_text[0, 0], null_mask=null_mask[0, 0]
        )

    def __call__(self, prompts, frames, height, width, seed=0, steps=30, guidance=4.0):
        """uint8 videos (B, frames, height, width, 3), one per prompt (a class-conditional
        model takes class names or indices as prompts)."""
        latent = self.codec.latent_shape(frames, height, width)  # (T', H', W', C)
        grid = patching.grid_shape(latent[:3], self.dit.config.patch_size)
        if self.dit.config.conditioning == "class":
            conditioning = {"labels": class_labels(self.class_names, prompts)}  # (B, 1)
        else:
            conditioning = self.text_conditioning(prompts)
        num_tokens = int(np.prod(grid))
        noise = request_noise(seed, len(prompts), num_tokens, self.dit.config.patch_features)
        rows = single_request_rows(
            noise, grid, self.time_shift.for_tokens(num_tokens), conditioning
        )
        tokens = self.sampler(
            self.params,
            rows,
            jnp.float32(guidance),
            dit=self.dit,
            text_config=self.text_config,
            num_steps=steps,
        )
        unpatch = functools.partial(
            patching.unpatchify,
            grid=grid,
            patch_size=self.dit.config.patch_size,
            channels=latent[3],
        )
        latents = jax.vmap(unpatch)(tokens)  # (B, T', H', W', C)
        if self.sampler.report:
            status("decoding with the VAE")
        return np.asarray(self.decode(self.codec.params, latents))

    def sample_window(self, prompt: str, plan, seed=0, steps=30, guidance=4.0, visual_guidance=1.0):
        """One prompting-mode window (soraj.prompting.WindowPlan): (latents (T', H', W', C),
        uint8 video (T, H, W, 3)). Given latents come out exactly as the plan gave them. With
        a visual condition and visual_guidance ≠ 1 the guidance is dual (text and visual)."""
        if self.dit.config.conditioning == "class":
            raise ValueError("prompting modes need a text-conditional checkpoint")
        patch = tuple(self.dit.config.patch_size)
        latent_shape = plan.reference.shape  # (T', H', W', C)
        grid = patching.grid_shape(latent_shape[:3], patch)
        reference, _ = patching.patchify(jnp.asarray(plan.reference), patch)  # (N, P)
        per_frame = np.broadcast_to(
            np.stack([plan.level, plan.visual.astype(np.float32)], -1)[:, None, None],
            (*latent_shape[:3], 2),
        )  # (T', H', W', 2)
        per_token, _ = patching.patchify(jnp.asarray(per_frame), patch)  # (N, pt·ph·pw·2)
        per_token = np.asarray(per_token).reshape(per_token.shape[0], -1, 2)
        if np.any(per_token != per_token[:, :1]):
            raise ValueError(
                f"given frames must fill whole temporal patches of {patch[0]} latent frames"
            )
        level, visual = per_token[:, 0, 0], per_token[:, 0, 1] > 0  # (N,), (N,)
        conditioning = self.text_conditioning([prompt])
        num_tokens = int(np.prod(grid))
        noise = request_noise(seed, 1, num_tokens, self.dit.config.patch_features)
        rows = single_request_rows(
            noise, grid, self.time_shift.for_tokens(num_tokens), conditioning
        )
        rows.update(reference=reference[None], level=jnp.asarray(level)[None])
        scales = jnp.float32(guidance)
        if visual.any() and visual_guidance != 1.0:
            rows["visual"] = jnp.asarray(visual)[None]
            scales = jnp.asarray([guidance, visual_guidance], jnp.float32)
        tokens = self.sampler(
            self.params, rows, scales, dit=self.dit, text_config=self.text_config, num_steps=steps
        )
        latents = patching.unpatchify(tokens[0], grid, patch, latent_shape[3])  # (T', H', W', C)
        if self.sampler.report:
            status("decoding with the VAE")
        video = np.asarray(self.decode(self.codec.params, latents[None]))[0]
        return np.asarray(latents), video

    def generate_many(
        self,
        prompts,
        shapes,
        seeds=None,
        steps=30,
        guidance=4.0,
        row_length=None,
        max_segments=None,
    ):
        """uint8 videos (frames, height, width, 3), one per prompt, each at its own shape
        (frames, height, width), all solved in one packed call. Request i equals
        `self([prompts[i]], *shapes[i], seeds[i], steps, guidance)[0]`. Rows hold row_length
        tokens (default: the largest request's) and at most max_segments requests (default:
        all of them); seeds default to 0, 1, 2, ..."""
        if self.dit.config.conditioning == "class":
            raise ValueError(
                "generate_many packs text prompts; call a class-conditional Generator directly"
            )
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        check_static_count("steps", steps)
        if not len(prompts) == len(shapes) == len(seeds) >= 1:
            raise ValueError(
                f"got {len(prompts)} prompts, {len(shapes)} shapes and {len(seeds)} seeds; "
                "pass at least one prompt and one (frames, height, width) and seed per prompt"
            )
        geometry = BundleGeometry(
            self.codec.temporal_factor,
            self.codec.spatial_factor,
            tuple(self.dit.config.patch_size),
        )
        latents, grids = [], []
        for i, shape in enumerate(shapes):
            if len(shape) != 3:
                raise ValueError(f"shape {i} must be (frames, height, width), got {shape}")
            try:
                geometry.check(*shape)
            except ValueError as error:
                raise ValueError(f"shape {i} {tuple(shape)}: {error}") from None
            latents.append(self.codec.latent_shape(*shape))  # (T', H', W', C)
            grids.append(patching.grid_shape(latents[-1][:3], self.dit.config.patch_size))
        row_length = row_length or max(int(np.prod(g)) for g in grids)
        max_segments = max_segments or len(prompts)
        check_rows(grids, row_length, max_segments)
        text, text_mask = segment_inputs(self.text_encoder, prompts)  # (R, 1, M, ...)
        null_text, null_mask = segment_inputs(self.text_encoder, [""])
        tokens = sample_many_tokens(
            self.dit,
            self.params,
            self.text_config,
            self.time_shift,
            text[:, 0],
            text_mask[:, 0],
            null_text[0, 0],
            null_mask[0, 0],
            grids,
            seeds,
            steps=steps,
            guidance=guidance,
            row_length=row_length,
            max_segments=max_segments,
        )
        decode = self.decode
        videos = []
        for tokens_i, grid, latent in zip(tokens, grids, latents, strict=True):
            z = patching.unpatchify(tokens_i, grid, self.dit.config.patch_size, latent[3])
            videos.append(np.asarray(decode(self.codec.params, z[None]))[0])
        return videos


def init_params(dit: DiT, text_config: TextConfig, rng) -> dict:
    """The param tree a DiT export holds: {"dit": ...} plus {"text": ...} for a trainable
    text encoder. Used to build abstract trees for restoring."""
    n, m, e = 4, text_config.max_tokens, dit.config.text_width
    dit_inputs = (
        jnp.zeros((1, n, dit.config.patch_features)),  # x_t
        jnp.zeros((1, n)),  # t
        jnp.zeros((1, n, 3), jnp.int32),  # coords
        jnp.ones((1, n), jnp.int32),  # segment_ids
    )
    if dit.config.conditioning == "class":
        conditioning = {"labels": jnp.zeros((1, 1), jnp.int32)}
    else:
        conditioning = {"text": jnp.zeros((1, 1, m, e)), "text_mask": jnp.ones((1, 1, m), bool)}
    params = {"dit": dit.init(rng, *dit_inputs, **conditioning)["params"]}
    if text_config.trainable:
        params["text"] = init_text_params(text_config, jax.random.fold_in(rng, 1))
    return params
