"""Models: the tiny Stable-Diffusion-layout base, its tokenizer, and loading a base by profile.

The tiny base mirrors SD 1.5 where a learner would notice: the same folder layout and loaders, a VAE
that downsamples by 8 with 4 latent channels (so ``ControlNetModel.from_unet(unet)`` works with its
default conditioning embedding), 32-group normalisation everywhere (diffusers' Flax UNet assumes 32),
a CLIP text encoder and a CLIP BPE tokenizer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from .paths import staged_folder

#: UNet of the tiny base: two resolutions, cross-attention at both, 32 normalisation groups like SD
#: (diffusers' Flax UNet assumes 32). 64 channels, so each group has two: with one channel per group the
#: last GroupNorm would be an instance norm, which erases the per-channel means that carry the colours.
TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
#: VAE of the tiny base: four blocks, so three downsamplings (8x), 4 latent channels, like SD's VAE.
TINY_VAE_CONFIG = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    # 8 groups of 4 channels, as SD's VAE (128 channels / 32 groups): with one channel per group a
    # GroupNorm is an instance norm, which erases flat colours, and fill images are flat colours.
    norm_num_groups=8,
    scaling_factor=0.18215,
)
#: CLIP text encoder of the tiny base; its hidden size is the UNet's cross_attention_dim.
TINY_TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)
#: The noise schedule of SD 1.5 (its scheduler folder holds a PNDMScheduler with these values).
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters (the BPE base alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def learn_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn CLIP-style BPE merges until every word of ``words`` is a single token.

    Words end in ``</w>`` as in CLIP. Ties between equally frequent pairs go to the smaller pair, so
    the result is deterministic.
    """
    corpus = Counter(tuple(word[:-1]) + (word[-1] + "</w>",) for word in words if word)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for symbols, count in corpus.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter = Counter()
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        corpus = merged


def write_clip_tokenizer(folder: str | Path, words: list[str]) -> Path:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) whose vocabulary holds ``words`` whole.

    Like CLIP's, the vocabulary starts with the 256 byte characters and their ``</w>`` forms, so any
    text tokenizes without an unknown token; ``words`` become single tokens through learned merges.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges = learn_bpe_merges(sorted({w.lower() for w in words}))
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "add_prefix_space": False, "errors": "replace",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
    }, indent=2))
    return folder


def _seeded(seed: int, make):
    torch.manual_seed(seed)
    return make()


def build_tiny_base(path: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Build the tiny SD-layout base with seeded random weights and save it as a diffusers folder.

    The folder loads with ``StableDiffusionPipeline.from_pretrained(path)`` and each part with its own
    ``from_pretrained(path, subfolder=...)``. It is written to a temporary folder and moved into place
    at the end, so an interrupted build never leaves a broken model behind.
    """
    from .data import caption_words

    with staged_folder(path) as tmp:
        _write_tiny_base(tmp, seed, words or caption_words())
    return Path(path)


def _write_tiny_base(folder: Path, seed: int, words: list[str]) -> None:
    """Save the seeded tiny pipeline and SD-style tokenizer files into ``folder``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer_dir = write_clip_tokenizer(folder / "tokenizer", words)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_ENCODER_CONFIG)
    pipeline = StableDiffusionPipeline(
        vae=_seeded(seed, lambda: AutoencoderKL(**TINY_VAE_CONFIG)),
        text_encoder=_seeded(seed + 1, lambda: CLIPTextModel(text_config)),
        tokenizer=tokenizer,
        unet=_seeded(seed + 2, lambda: UNet2DConditionModel(**TINY_UNET_CONFIG)),
        scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    write_clip_tokenizer(folder / "tokenizer", words)  # keep the SD-style vocab.json and merges.txt too
    (folder / "README.md").write_text(TINY_MODEL_CARD.format(seed=seed))


TINY_MODEL_CARD = """\
# tiny-sd (ControlNet course)

A Stable-Diffusion-1.5-layout model, small enough to train and run on a CPU, for the course's `tiny` profile.
Built offline by `cnhelpers.models.build_tiny_base(path, seed={seed})` with seeded random weights.

- `vae/`: AutoencoderKL, 8x downsampling, 4 latent channels, 32-group norms
- `unet/`: UNet2DConditionModel, blocks (32, 64), cross-attention dim 64, 32-group norms
- `text_encoder/`: CLIPTextModel, 2 layers, hidden size 64
- `tokenizer/`: CLIP BPE tokenizer whose vocabulary holds every word of the fill captions
- `scheduler/`: PNDMScheduler with SD 1.5's noise schedule
"""


def is_complete_base(path: str | Path) -> bool:
    """True when ``path`` holds a full SD-layout folder (model_index.json and every component)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all(
        (path / sub).is_dir() for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))


#: The pretrained tiny base shipped with the package (``python -m cnhelpers.pretrain_base`` made it).
PRETRAINED_TINY_BASE = Path(__file__).resolve().parent / "assets" / "tiny-sd"


def ensure_tiny_base(seed: int = 0) -> Path:
    """Return the tiny base's folder under the build folder (``build/tiny-sd``), putting it there first.

    It is a copy of the pretrained base shipped in ``cnhelpers/assets/tiny-sd`` (refreshed when that one
    changes). Without it (a stripped install), a base with seeded random weights is built instead, with a
    warning: the course then runs, but every picture is noise.
    """
    import shutil
    import warnings

    from .paths import build_dir

    path = build_dir() / "tiny-sd"
    if is_complete_base(PRETRAINED_TINY_BASE):
        card = (PRETRAINED_TINY_BASE / "README.md").read_text()
        if not is_complete_base(path) or not (path / "README.md").is_file() or \
                (path / "README.md").read_text() != card:
            with staged_folder(path) as tmp:
                shutil.copytree(PRETRAINED_TINY_BASE, tmp, dirs_exist_ok=True)
    elif not is_complete_base(path):
        warnings.warn(f"The pretrained tiny base is missing ({PRETRAINED_TINY_BASE}): building one with random "
                      "weights, so generated pictures will be noise. Reinstall the course, or make it with "
                      "`python -m cnhelpers.pretrain_base` and copy build/pretrain/tiny-sd there.", stacklevel=2)
        build_tiny_base(path, seed=seed)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def tokenize_unknowns(tokenizer, texts: list[str]) -> list[str]:
    """Words of ``texts`` that the tokenizer cannot keep whole (split into pieces); empty when covered."""
    vocab = tokenizer.get_vocab()
    words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
    return sorted(w for w in words if w + "</w>" not in vocab)


# --------------------------------------------------------------------------------------------------
# A ControlNet made from the UNet (notebook 02)
# --------------------------------------------------------------------------------------------------

#: SD 1.5's UNet (``unet/config.json`` of stable-diffusion-v1-5); the fields not given are diffusers'
#: defaults, which are SD 1.5's too. Built on the meta device it costs no memory and needs no download.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


def sd15_unet_and_controlnet_on_meta():
    """SD 1.5's UNet and the ControlNet ``from_unet`` makes of it, on the meta device.

    Meta tensors have shapes but no storage, so this counts parameters of the real architecture without
    downloading or allocating 4 GB. The weights are not real (nor copied): use it for shapes and counts.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return unet, controlnet


def vae_scale_factor(vae) -> int:
    """How much the VAE shrinks each image side: 2 per downsampling, one fewer than its blocks (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def conditioning_downsampling(controlnet_or_channels) -> int:
    """How much the ControlNet's conditioning embedding shrinks the conditioning image (8 by default).

    Takes a ControlNet or its ``conditioning_embedding_out_channels``: each entry after the first adds a
    stride-2 convolution.
    """
    channels = getattr(getattr(controlnet_or_channels, "config", None), "conditioning_embedding_out_channels",
                       controlnet_or_channels)
    return 2 ** (len(channels) - 1)


def _group(name: str) -> str:
    # The conditioning embedding's last convolution is zero-initialised, its other layers are not: own row.
    if name.startswith("controlnet_cond_embedding.conv_out."):
        return "controlnet_cond_embedding.conv_out"
    return name.split(".")[0]


def _is_zero(tensor: torch.Tensor) -> bool:
    return not tensor.is_meta and bool((tensor == 0).all())


#: How each kind of :func:`copied_and_new_parameters` reads in a table.
PARAMETER_KINDS = {
    "copied": "copied from the UNet",
    "changed": "in both, values differ",
    "new_zero": "new, zero-initialised",
    "new": "new, random init",
    "new_unknown": "new (meta device: no values)",
    "unet_only": "UNet only (decoder)",
}


def copied_and_new_parameters(unet, controlnet) -> dict[str, list[str]]:
    """Sort every parameter name of a ControlNet made from ``unet`` by where its value came from.

    - ``copied``: also in the UNet, with an identical value (conv_in, time embedding, down and mid blocks);
    - ``changed``: also in the UNet, but a different value (after training, or not made from this UNet);
    - ``new_zero``: only in the ControlNet and all zeros (the zero convolutions);
    - ``new``: only in the ControlNet, randomly initialised (the conditioning embedding's other layers);
    - ``unet_only``: in the UNet but not the ControlNet (its decoder half: up blocks, output layers).

    On the meta device values cannot be compared: names in both count as ``copied`` (what ``from_unet``
    copies), and names only in the ControlNet as ``new_unknown``.
    """
    unet_params = dict(unet.named_parameters())
    result: dict[str, list[str]] = {kind: [] for kind in PARAMETER_KINDS}
    for name, param in controlnet.named_parameters():
        if name in unet_params:
            other = unet_params[name]
            same = param.is_meta or other.is_meta or (param.shape == other.shape and torch.equal(param, other))
            result["copied" if same else "changed"].append(name)
        else:
            result["new_unknown" if param.is_meta else "new_zero" if _is_zero(param) else "new"].append(name)
    controlnet_names = {name for name, _ in controlnet.named_parameters()}
    result["unet_only"] = [name for name in unet_params if name not in controlnet_names]
    return result


def parameter_groups(unet, controlnet) -> list[tuple[str, str, int]]:
    """Rows ``(module, kind, parameters)``, one per top-level module of the two models, in model order.

    ``kind`` is a key of :data:`PARAMETER_KINDS`; the conditioning embedding's zero ``conv_out`` is its
    own row. A module whose parameters are of several kinds is listed once per kind.
    """
    kinds = copied_and_new_parameters(unet, controlnet)
    kind_of = {name: kind for kind, names in kinds.items() for name in names}
    sizes = {name: p.numel() for name, p in unet.named_parameters()}
    sizes.update({name: p.numel() for name, p in controlnet.named_parameters()})
    rows: dict[tuple[str, str], int] = {}
    for name in [n for n, _ in controlnet.named_parameters()] + kinds["unet_only"]:
        key = (_group(name), kind_of[name])
        rows[key] = rows.get(key, 0) + sizes[name]
    return [(module, kind, count) for (module, kind), count in rows.items()]


def print_parameter_groups(rows: list[tuple[str, str, int]]) -> None:
    """Print :func:`parameter_groups` rows as an aligned table."""
    width = max(len(module) for module, _, _ in rows)
    for module, kind, count in rows:
        print(f"{module:<{width}}  {count:>12,}  {PARAMETER_KINDS[kind]}")


def zero_convolutions(controlnet) -> list[str]:
    """Names of the ControlNet's convolutions whose weights and biases are all zero."""
    return [name for name, module in controlnet.named_modules()
            if isinstance(module, torch.nn.Conv2d) and _is_zero(module.weight)
            and (module.bias is None or _is_zero(module.bias))]


def demo_inputs(unet, resolution: int, batch_size: int = 2, vae_factor: int = 8, seed: int = 0,
                sequence_length: int = 77) -> dict[str, torch.Tensor]:
    """Seeded stand-ins for one training batch, shaped for ``unet``: noisy latents, timesteps, text
    embeddings, a [0, 1] conditioning image at ``resolution`` and a noise target."""
    generator = torch.Generator().manual_seed(seed)
    side = resolution // vae_factor
    latents_shape = (batch_size, unet.config.in_channels, side, side)
    return {
        "latents": torch.randn(latents_shape, generator=generator),
        "timesteps": torch.randint(0, 1000, (batch_size,), generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, sequence_length, unet.config.cross_attention_dim,
                                             generator=generator),
        "conditioning": torch.rand(batch_size, 3, resolution, resolution, generator=generator),
        "target": torch.randn(latents_shape, generator=generator),
    }


def controlnet_residuals(controlnet, inputs: dict, conditioning_scale: float = 1.0):
    """The ControlNet's residuals for ``inputs``: one per UNet down-block output, and one for the mid block."""
    return controlnet(inputs["latents"], inputs["timesteps"], encoder_hidden_states=inputs["encoder_hidden_states"],
                      controlnet_cond=inputs["conditioning"], conditioning_scale=conditioning_scale,
                      return_dict=False)


def predict_noise(unet, controlnet, inputs: dict, residuals=None):
    """The UNet's noise prediction with the ControlNet's residuals added (``controlnet=None``: without).

    Pass ``residuals`` (from :func:`controlnet_residuals`) to reuse ones already computed.
    """
    extra = {}
    if controlnet is not None or residuals is not None:
        down, mid = residuals if residuals is not None else controlnet_residuals(controlnet, inputs)
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(inputs["latents"], inputs["timesteps"], encoder_hidden_states=inputs["encoder_hidden_states"],
                **extra).sample


@torch.no_grad()
def zero_convolution_check(unet, controlnet, inputs: dict) -> dict:
    """Run the ControlNet once and compare the UNet's output with and without it.

    Returns ``max_residual`` (largest absolute value of any residual the ControlNet hands the UNet),
    ``identical`` (the two outputs are bit-for-bit equal) and ``verdict`` (a sentence saying so).
    """
    down, mid = controlnet_residuals(controlnet, inputs)
    max_residual = max(float(r.abs().max()) for r in (*down, mid))
    identical = torch.equal(predict_noise(unet, None, inputs, residuals=(down, mid)),
                            predict_noise(unet, None, inputs))
    if max_residual == 0 and identical:
        verdict = (f"all {len(down) + 1} residuals are exactly zero, and the UNet's output with the ControlNet "
                   "is identical to its output without it")
    else:
        verdict = (f"the residuals reach {max_residual:.3g}; the UNet's output "
                   f"{'is still identical' if identical else 'changes'} with the ControlNet")
    return {"max_residual": max_residual, "identical": identical, "verdict": verdict,
            "num_residuals": len(down) + 1}


#: Parameter groups of a ControlNet made from a UNet, for following where gradients arrive.
GRADIENT_GROUPS = {
    "zero convolutions (controlnet_down_blocks, controlnet_mid_block)":
        lambda name: name.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")),
    "copied encoder (conv_in, time_embedding, down_blocks, mid_block)":
        lambda name: name.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")),
    "conditioning embedding: conv_out (zero)":
        lambda name: name.startswith("controlnet_cond_embedding.conv_out."),
    "conditioning embedding: other layers":
        lambda name: name.startswith("controlnet_cond_embedding.") and ".conv_out." not in name,
}


def gradient_flow_steps(unet, controlnet, inputs: dict, steps: int = 3, learning_rate: float = 1e-4) -> list[dict]:
    """Train a copy of ``controlnet`` for a few AdamW steps on one batch and record, before each step,
    the loss, the largest residual and the gradient norm of each of :data:`GRADIENT_GROUPS`.

    The UNet stays frozen, as in ControlNet training. At the first step only the zero convolutions get a
    gradient (their inputs are not zero); a zero layer blocks the gradient to the layers before it until
    a step has moved it away from zero, so the gradient reaches one zero layer deeper per step.
    """
    import copy

    controlnet = copy.deepcopy(controlnet).train()
    unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=learning_rate)
    history = []
    for step in range(steps):
        down, mid = controlnet_residuals(controlnet, inputs)
        prediction = predict_noise(unet, None, inputs, residuals=(down, mid))
        loss = torch.nn.functional.mse_loss(prediction.float(), inputs["target"].float())
        optimizer.zero_grad()
        loss.backward()
        record = {"step": step, "loss": loss.item(),
                  "max_residual": max(float(r.detach().abs().max()) for r in (*down, mid))}
        for group, belongs in GRADIENT_GROUPS.items():
            grads = [p.grad for n, p in controlnet.named_parameters() if belongs(n) and p.grad is not None]
            record[group] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
        history.append(record)
        optimizer.step()
    return history


def load_or_create_controlnet(unet, controlnet_model_name_or_path=None):
    """What upstream's ``--controlnet_model_name_or_path`` switches: load existing ControlNet weights
    (a hub id or a folder saved with ``save_pretrained``), or make a new ControlNet from the UNet."""
    from diffusers import ControlNetModel

    if controlnet_model_name_or_path is not None:
        return ControlNetModel.from_pretrained(controlnet_model_name_or_path)
    return ControlNetModel.from_unet(unet)


def check_controlnet_fits(controlnet, unet, vae_factor: int = 8) -> None:
    """Refuse, with the reason and the fix, a ControlNet that cannot feed this UNet and VAE.

    Its conditioning embedding must shrink the conditioning image by the VAE's factor (so the embedding
    and the latents have the same size), and its encoder must have the UNet's channels and text width.
    """
    factor = conditioning_downsampling(controlnet)
    if factor != vae_factor:
        channels = tuple(controlnet.config.conditioning_embedding_out_channels)
        raise ValueError(
            f"The ControlNet's conditioning embedding shrinks the conditioning image {factor}x "
            f"(conditioning_embedding_out_channels={channels} has {len(channels)} entries), but the VAE shrinks "
            f"images {vae_factor}x, so the embedding and the latents would differ in size. Use a ControlNet "
            f"whose conditioning_embedding_out_channels has {vae_factor.bit_length()} entries, "
            f"e.g. ControlNetModel.from_unet(unet) with its default (16, 32, 96, 256)."
        )
    for field in ("block_out_channels", "cross_attention_dim", "in_channels"):
        mine, theirs = controlnet.config[field], unet.config[field]
        if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise ValueError(f"The ControlNet's {field} is {mine} but the UNet's is {theirs}: it was made for "
                             "another base model. Load a ControlNet trained for this base, or make one with "
                             "ControlNetModel.from_unet(unet).")


# --------------------------------------------------------------------------------------------------
# The SD 1.5 architecture with random weights (benchmarks/memory_ladder.py; nothing is downloaded)
# --------------------------------------------------------------------------------------------------

#: SD 1.5's VAE (the same 8x AutoencoderKL as the tiny one, at full width).
SD15_VAE_CONFIG = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    # 8 groups of 4 channels, as SD's VAE (128 channels / 32 groups): with one channel per group a
    # GroupNorm is an instance norm, which erases flat colours, and fill images are flat colours.
    norm_num_groups=8,
    scaling_factor=0.18215,
)
#: SD 1.5's text encoder: the text half of CLIP ViT-L/14.
SD15_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)


def build_sd15_random_base(path: str | Path, seed: int = 0) -> Path:
    """An SD-1.5-architecture folder with seeded random weights (about 4 GB), for memory and speed tests.

    Memory and speed depend on the architecture, not on the weight values, so this stands in for the real
    model where nothing can be downloaded. The tokenizer is the tiny one (its ids fit CLIP's vocabulary).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .data import caption_words

    with staged_folder(path) as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer", caption_words()))
        text_config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, **SD15_TEXT_ENCODER_CONFIG)
        parts = {
            "vae": _seeded(seed, lambda: AutoencoderKL(**SD15_VAE_CONFIG)),
            "text_encoder": _seeded(seed + 1, lambda: CLIPTextModel(text_config)),
            "unet": _seeded(seed + 2, lambda: UNet2DConditionModel(**SD15_UNET_CONFIG)),
        }
        for name, model in parts.items():
            model.save_pretrained(folder / name)
        PNDMScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return Path(path)
