"""Flax/JAX ControlNet training (notebook 05), for the separate Flax environment only (``.venv-flax``).

This is the only cnhelpers module that imports jax, flax and optax. It needs diffusers <= 0.39 (0.40
removed every Flax class) and transformers 4.x (5 has no Flax models): ``make setup-flax`` installs the
pinned set of ``requirements-flax.txt``. To simulate several devices on a CPU, set
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before this module (or jax) is first imported.

What is here, in the order notebook 05 uses it:

- :func:`with_bin_weights`: a copy of a base model that ``from_pt=True`` can read;
- :func:`image_array`, :func:`conditioning_array`, :func:`numpy_batches`: transforms without torchvision;
- :func:`controlnet_from_unet`: a ``FlaxControlNetModel`` whose shared blocks are copies of the UNet's;
- :func:`compute_snr`, :func:`min_snr_weights`, :func:`per_sample_mse`: Min-SNR, broadcast per sample;
- :func:`create_train_state`, :func:`make_train_step`: optax AdamW and the step to ``jax.pmap``;
- :func:`replicate`, :func:`shard_batch`, :func:`pmapped`: placing state and batches on the devices;
- :func:`flax_sampler`: the scheduler to generate with, one that the PyTorch pipeline can match step for step;
- :func:`torch_controlnet_from_flax`: a saved Flax ControlNet as a PyTorch one, to compare the two pipelines.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils
from flax.core import unfreeze
from flax.training import train_state
from flax.training.common_utils import shard
from PIL import Image

from ..data import pick_captions
from ..paths import build_dir, staged_folder

#: The pmap axis that gradients and metrics are averaged over, and the name of the devices' mesh axis.
AXIS = "batch"

# --------------------------------------------------------------------------------------------------
# PyTorch weights that ``from_pt=True`` can read
# --------------------------------------------------------------------------------------------------

#: safetensors file -> the PyTorch pickle that diffusers' and transformers' Flax ``from_pt=True`` read.
BIN_NAMES = {"diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
             "model.safetensors": "pytorch_model.bin"}
#: The components a Flax Stable Diffusion pipeline loads from PyTorch weights.
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")


def _needs_bin(folder: Path) -> list[Path]:
    """The safetensors files of ``folder``'s components that have no ``.bin`` beside them."""
    missing = []
    for component in WEIGHT_COMPONENTS:
        for name, bin_name in BIN_NAMES.items():
            weights = folder / component / name
            if weights.is_file() and not (folder / component / bin_name).is_file():
                missing.append(weights)
    return missing


def text_model_prefixed(state_dict: dict, config: dict) -> dict:
    """CLIP text-encoder weights with the ``text_model.`` prefix that transformers 4.x expects.

    transformers 5 saves a ``CLIPTextModel`` without that prefix; transformers 4.x (the only one with
    Flax models) would then skip every weight and keep random ones, with just a long warning.
    """
    if config.get("model_type") != "clip_text_model" or any(k.startswith("text_model.") for k in state_dict):
        return state_dict
    return {f"text_model.{key}": value for key, value in state_dict.items()}


def _source_stamp(base: Path) -> dict:
    files = sorted(p for p in base.rglob("*") if p.is_file())
    return {"source": str(base.resolve()),
            "files": {p.relative_to(base).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def with_bin_weights(base: str | Path, target: str | Path | None = None) -> Path:
    """A folder with ``base``'s model in which every component also has PyTorch ``.bin`` weights.

    diffusers' Flax ``from_pretrained(..., from_pt=True)`` reads only ``diffusion_pytorch_model.bin``,
    not safetensors, so a base saved with safetensors alone (like the course's tiny base) needs a copy
    with ``.bin`` files. The CLIP text encoder's keys get the ``text_model.`` prefix back (see
    :func:`text_model_prefixed`). A base that already has ``.bin`` weights (SD 1.5's hub snapshot) is
    returned as it is. The copy is kept in ``target`` (default: ``<build>/<name>-<hash of the base's
    path>-bin``, so two bases in folders of the same name get copies of their own) and redone only when
    the base changes.
    """
    import torch
    from safetensors.torch import load_file

    base = Path(base)
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(f"{base} is not a diffusers model folder (no model_index.json); pass the folder "
                                "that holds unet/, vae/, text_encoder/ and model_index.json")
    if not _needs_bin(base):
        return base
    if target is None:
        source_hash = hashlib.sha1(str(base.resolve()).encode()).hexdigest()[:8]
        target = build_dir() / f"{base.name}-{source_hash}-bin"
    target = Path(target)
    stamp = _source_stamp(base)
    stamp_file = target / "converted-from.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    with staged_folder(target) as tmp:
        shutil.copytree(base, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))
        for weights in _needs_bin(base):
            component = weights.parent.name
            config_file = base / component / "config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            state_dict = text_model_prefixed(load_file(weights), config)
            torch.save(state_dict, tmp / component / BIN_NAMES[weights.name])
        stamp_file_tmp = tmp / stamp_file.name
        stamp_file_tmp.write_text(json.dumps(stamp))
    return target


# --------------------------------------------------------------------------------------------------
# Transforms without torchvision (it cannot be imported beside the CPU torch of this environment)
# --------------------------------------------------------------------------------------------------

def _resize_and_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """Resize the short side to ``resolution`` (bilinear), center-crop a square, as HWC uint8."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left = int(round((image.width - resolution) / 2.0))
    top = int(round((image.height - resolution) / 2.0))
    return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


def image_array(image: Image.Image, resolution: int) -> np.ndarray:
    """A target image as float32 (3, H, W) in [-1, 1], the VAE's range (resize, center-crop, normalise)."""
    return (_resize_and_crop(image, resolution).transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0


def conditioning_array(image: Image.Image, resolution: int) -> np.ndarray:
    """A conditioning image as float32 (3, H, W) in [0, 1], the range the ControlNet is fed."""
    return _resize_and_crop(image, resolution).transpose(2, 0, 1).astype(np.float32) / 255.0


def numpy_batch(rows: list[dict], tokenizer, resolution: int, proportion_empty_prompts: float = 0.0,
                rng=None) -> dict[str, np.ndarray]:
    """Stack rows (image, conditioning_image, text) into the arrays the Flax train step takes."""
    captions = pick_captions([row["text"] for row in rows], proportion_empty_prompts, True, rng)
    input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                          truncation=True, return_tensors="np").input_ids
    return {
        "pixel_values": np.stack([image_array(row["image"], resolution) for row in rows]),
        "conditioning_pixel_values": np.stack([conditioning_array(row["conditioning_image"], resolution)
                                               for row in rows]),
        "input_ids": input_ids.astype(np.int32),
    }


def numpy_batches(dataset, tokenizer, *, resolution: int, batch_size: int, seed: int = 0,
                  proportion_empty_prompts: float = 0.0):
    """Endless shuffled batches of ``dataset`` (a list of rows or a datasets.Dataset), epoch after epoch.

    Each epoch is a new seeded permutation; the last incomplete batch is dropped, so every batch
    splits evenly over the devices.
    """
    import random

    if len(dataset) < batch_size:
        raise ValueError(f"The data set has {len(dataset)} rows, fewer than one batch of {batch_size}: "
                         "lower the batch size or use more examples")
    order_rng, caption_rng = np.random.default_rng(seed), random.Random(seed)
    while True:
        order = order_rng.permutation(len(dataset))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = [dataset[int(i)] for i in order[start:start + batch_size]]
            yield numpy_batch(rows, tokenizer, resolution, proportion_empty_prompts, caption_rng)


# --------------------------------------------------------------------------------------------------
# The ControlNet, initialised from the UNet
# --------------------------------------------------------------------------------------------------

def count_params(tree) -> int:
    """Number of parameters in a pytree of arrays."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def controlnet_from_unet(unet, unet_params, rng, conditioning_embedding_out_channels=(16, 32, 96, 256)):
    """A ``FlaxControlNetModel`` shaped like ``unet``, with copies of the blocks the two have in common.

    Returns ``(controlnet, params, copied)``. ``copied`` maps each copied top-level block (``conv_in``,
    ``time_embedding``, every ``down_blocks_i``, ``mid_block``) to its parameter count; the rest
    (``controlnet_cond_embedding``, the zero convolutions) keeps its fresh initialisation. The copies
    are new arrays: the UNet's stay frozen, and donating the train state cannot delete them.
    """
    from diffusers import FlaxControlNetModel

    config = unet.config
    controlnet = FlaxControlNetModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        down_block_types=tuple(config.down_block_types),
        only_cross_attention=config.only_cross_attention,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        cross_attention_dim=config.cross_attention_dim,
        use_linear_projection=config.use_linear_projection,
        flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
    )
    params = unfreeze(controlnet.init_weights(rng))
    unet_params = unfreeze(unet_params)
    copied = {}
    for key in [k for k in params if k in unet_params]:
        ours = jax.tree_util.tree_map(jnp.shape, params[key])
        theirs = jax.tree_util.tree_map(jnp.shape, unet_params[key])
        if ours != theirs:
            raise ValueError(f"The ControlNet's {key!r} does not have the UNet's shapes; build the ControlNet "
                             "from this UNet's config (controlnet_from_unet does) rather than from another one")
        params[key] = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), unet_params[key])
        copied[key] = count_params(params[key])
    return controlnet, params, copied


def parameter_groups(unet_params, controlnet_params) -> list[tuple[str, str, int]]:
    """Rows ``(block, kind, parameters)`` for the top-level blocks of a ControlNet and its UNet.

    ``kind`` is ``copied`` (in both, identical values), ``changed`` (in both, different values),
    ``new_zero`` (ControlNet only, all zeros: the zero convolutions), ``new`` (ControlNet only, random)
    or ``unet_only`` (the UNet's decoder half, which the ControlNet does not have).
    """
    rows = []
    for key, value in controlnet_params.items():
        leaves = jax.tree_util.tree_leaves(value)
        if key in unet_params:
            same = jax.tree_util.tree_all(jax.tree_util.tree_map(
                lambda a, b: bool(a.shape == b.shape and jnp.array_equal(a, b)), value, unet_params[key]))
            kind = "copied" if same else "changed"
        else:
            kind = "new_zero" if all(not jnp.any(leaf) for leaf in leaves) else "new"
        rows.append((key, kind, count_params(value)))
    rows += [(key, "unet_only", count_params(value)) for key, value in unet_params.items()
             if key not in controlnet_params]
    return rows


def _buffer_pointers(tree) -> set[int]:
    return {shard.data.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)
            for shard in x.addressable_shards}


def shares_buffers(tree_a, tree_b) -> bool:
    """True when some array of ``tree_a`` is the very buffer of one in ``tree_b`` (not just equal values)."""
    return bool(_buffer_pointers(tree_a) & _buffer_pointers(tree_b))


# --------------------------------------------------------------------------------------------------
# Min-SNR loss weighting
# --------------------------------------------------------------------------------------------------

def compute_snr(alphas_cumprod, timesteps):
    """Signal-to-noise ratio of each timestep: alpha_bar / (1 - alpha_bar)."""
    alpha_bar = alphas_cumprod[timesteps]
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr, gamma: float, prediction_type: str = "epsilon"):
    """Min-SNR-gamma weights, one per sample (shape (B,)).

    ``min(snr, gamma) / snr`` for epsilon prediction, ``min(snr, gamma) / (snr + 1)`` for v-prediction.
    """
    if prediction_type == "epsilon":
        return jnp.minimum(snr, gamma) / snr
    if prediction_type == "v_prediction":
        return jnp.minimum(snr, gamma) / (snr + 1.0)
    raise ValueError(f"Unknown prediction_type {prediction_type!r}: use 'epsilon' or 'v_prediction'")


def per_sample_mse(prediction, target):
    """Mean squared error of each sample: (B, C, H, W) -> (B,), ready to multiply by (B,) weights."""
    return jnp.mean((prediction - target) ** 2, axis=tuple(range(1, prediction.ndim)))


# --------------------------------------------------------------------------------------------------
# Train state and train step
# --------------------------------------------------------------------------------------------------

def create_train_state(controlnet, params, learning_rate: float, *, weight_decay: float = 1e-2,
                       max_grad_norm: float = 1.0) -> train_state.TrainState:
    """A flax ``TrainState`` with gradient clipping then AdamW (optax)."""
    optimizer = optax.chain(optax.clip_by_global_norm(max_grad_norm),
                            optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))
    return train_state.TrainState.create(apply_fn=controlnet.__call__, params=params, tx=optimizer)


def make_train_step(controlnet, unet, vae, text_encoder, noise_scheduler, scheduler_state, *,
                    snr_gamma: float | None = None, axis_name: str | None = AXIS):
    """The ControlNet train step: ``step(state, frozen, batch, rng) -> (state, metrics, rng)``.

    ``frozen`` holds the frozen params: ``{"unet": ..., "vae": ..., "text_encoder": ...}``. The step
    encodes images to latents, adds noise at random timesteps, runs ControlNet + UNet, and takes an
    AdamW step on the ControlNet's params only. With ``snr_gamma`` the loss is Min-SNR weighted, per
    sample. With ``axis_name`` (for ``jax.pmap``) gradients and metrics are averaged over devices;
    pass ``axis_name=None`` to ``jax.jit`` it on one device.
    """
    prediction_type = noise_scheduler.config.prediction_type
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    scaling_factor = vae.config.scaling_factor

    def loss_fn(params, frozen, batch, rng):
        latent_rng, noise_rng, timestep_rng = jax.random.split(rng, 3)
        posterior = vae.apply({"params": frozen["vae"]}, batch["pixel_values"], deterministic=True,
                              method=vae.encode).latent_dist
        latents = jnp.transpose(posterior.sample(latent_rng), (0, 3, 1, 2)) * scaling_factor  # NHWC -> NCHW
        noise = jax.random.normal(noise_rng, latents.shape)
        timesteps = jax.random.randint(timestep_rng, (latents.shape[0],), 0, num_train_timesteps)
        noisy_latents = noise_scheduler.add_noise(scheduler_state, latents, noise, timesteps)
        text = text_encoder(batch["input_ids"], params=frozen["text_encoder"], train=False)[0]
        down, mid = controlnet.apply({"params": params}, noisy_latents, timesteps, text,
                                     batch["conditioning_pixel_values"], train=True, return_dict=False)
        prediction = unet.apply({"params": frozen["unet"]}, noisy_latents, timesteps, text,
                                down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(scheduler_state, latents, noise, timesteps)
        else:
            raise ValueError(f"Unknown prediction_type {prediction_type!r}")
        losses = per_sample_mse(prediction, target)  # (B,)
        if snr_gamma is not None:
            snr = compute_snr(scheduler_state.common.alphas_cumprod, timesteps)
            losses = losses * min_snr_weights(snr, snr_gamma, prediction_type)  # (B,) * (B,)
        return losses.mean()

    def train_step(state, frozen, batch, rng):
        step_rng, next_rng = jax.random.split(rng)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, frozen, batch, step_rng)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        return state.apply_gradients(grads=grads), metrics, next_rng

    return train_step


# --------------------------------------------------------------------------------------------------
# Devices: replicate, shard, pmap
# --------------------------------------------------------------------------------------------------

def device_sharding(devices=None) -> jax.sharding.NamedSharding:
    """Split an array's leading axis over ``devices`` (default: all local ones), on a mesh axis named AXIS."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                      jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices=None):
    """One copy of ``tree`` per device, stacked on a leading axis and placed with :func:`device_sharding`.

    Since jax 0.8 the pmapped step compiles a second time on step 2 unless its inputs already have
    the sharding its outputs get (mesh axis named like the pmap axis); this placement has it.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax_utils.replicate(tree, devices=devices, axis_name=AXIS)


def shard_batch(batch: dict, devices=None) -> dict:
    """Split a global batch (leading axis B) into (devices, B / devices, ...) and place one slice per device."""
    devices = list(devices) if devices is not None else jax.local_devices()
    n = len(devices)
    sizes = {key: value.shape[0] for key, value in batch.items()}
    if any(size % n for size in sizes.values()):
        raise ValueError(f"A batch of {sizes} cannot be split evenly over {n} devices: "
                         f"use a batch size that is a multiple of {n}")
    if n == jax.local_device_count():
        split = shard(batch)  # flax's helper: (B, ...) -> (local devices, B / devices, ...)
    else:
        split = jax.tree_util.tree_map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    return jax.device_put(split, device_sharding(devices))


def device_rngs(rng, devices=None):
    """One PRNG key per device, placed like the rest of the step's inputs."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax.device_put(jax.random.split(rng, len(devices)), device_sharding(devices))


def pmapped(train_step, devices=None):
    """``jax.pmap`` of the train step over ``devices``, averaging over AXIS, donating the train state."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax.pmap(train_step, axis_name=AXIS, devices=devices, donate_argnums=(0,))


def time_pmapped_step(train_step, state, frozen, batch, rng, devices, steps: int = 5) -> dict:
    """Compile and time the pmapped ``train_step`` on ``devices``: first call, then ``steps`` more.

    ``state`` and ``frozen`` are unreplicated; ``batch`` is a global numpy batch. Returns seconds:
    ``{"devices", "first_step_s", "step_s"}`` (``step_s`` is the mean of the later steps).
    """
    step = pmapped(train_step, devices)
    state, frozen = replicate(state, devices), replicate(frozen, devices)
    batch, rngs = shard_batch(batch, devices), device_rngs(rng, devices)
    start = time.perf_counter()
    state, metrics, rngs = step(state, frozen, batch, rngs)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics, rngs = step(state, frozen, batch, rngs)
    jax.block_until_ready(metrics)
    return {"devices": len(devices), "first_step_s": first, "step_s": (time.perf_counter() - start) / steps}


class CompileCounter:
    """Counts XLA compilations while it is active: ``with CompileCounter() as compiles: ...; compiles.count``."""

    _EVENT = "/jax/core/compile/backend_compile_duration"
    _active: list = []
    _listening = False

    def __init__(self):
        self.count = 0

    @classmethod
    def _listen(cls, event, seconds, **kwargs):
        if event == cls._EVENT:
            for counter in cls._active:
                counter.count += 1

    def __enter__(self):
        if not CompileCounter._listening:  # jax listeners cannot be removed: register one, once
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listen)
            CompileCounter._listening = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileCounter._active.remove(self)
        return False


def unreplicate(tree):
    """The first device's copy of a replicated tree, fetched to host memory (what you save)."""
    return jax.device_get(jax_utils.unreplicate(tree))


# --------------------------------------------------------------------------------------------------
# Generating
# --------------------------------------------------------------------------------------------------

#: What ``DPMSolverMultistepScheduler`` (PyTorch) needs to compute the steps of :func:`flax_sampler`'s
#: scheduler: its default final step goes to zero noise, which the Flax scheduler has no option for.
PYTORCH_SAMPLER_MATCH = {"final_sigmas_type": "sigma_min"}


def flax_sampler(base: str | Path):
    """``(scheduler, state)``: DPM-Solver++ (2M) on ``base``'s noise schedule, to generate with.

    The PyTorch notebooks sample with UniPC, which has no Flax version; DPM-Solver++ is the nearest Flax
    multistep solver, and like UniPC it draws clean pictures in 20 steps. A PyTorch
    ``DPMSolverMultistepScheduler`` built from the same config with :data:`PYTORCH_SAMPLER_MATCH`
    takes the same steps. Not the base's own PNDM: with ``skip_prk_steps`` its timesteps have one more
    entry than ``num_inference_steps``, and diffusers' Flax pipelines loop ``num_inference_steps``
    times, so they never take its last step (the PyTorch pipelines loop over every timestep).
    """
    from diffusers import FlaxDPMSolverMultistepScheduler

    return FlaxDPMSolverMultistepScheduler.from_pretrained(base, subfolder="scheduler")


def torch_controlnet_from_flax(folder: str | Path):
    """A PyTorch ``ControlNetModel`` (eval mode) with the weights of the ``FlaxControlNetModel`` saved in ``folder``.

    diffusers 0.39's ``ControlNetModel.from_pretrained(folder, from_flax=True)`` converts the weights, then
    goes on to read the msgpack file as a PyTorch checkpoint and fails; this runs its conversion alone.
    """
    import warnings

    from diffusers import ControlNetModel
    from diffusers.models.modeling_pytorch_flax_utils import load_flax_checkpoint_in_pytorch_model
    from diffusers.utils import FLAX_WEIGHTS_NAME

    folder = Path(folder)
    if not (folder / FLAX_WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {FLAX_WEIGHTS_NAME}; pass the folder that "
                                "FlaxControlNetModel.save_pretrained wrote")
    model = ControlNetModel.from_config(ControlNetModel.load_config(folder))
    with warnings.catch_warnings():  # torch.from_numpy on the read-only arrays of the msgpack file
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        model = load_flax_checkpoint_in_pytorch_model(model, folder / FLAX_WEIGHTS_NAME)
    return model.eval()
