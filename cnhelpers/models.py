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

#: UNet of the tiny base: two resolutions, cross-attention at both, 32 normalisation groups like SD.
TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
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
    norm_num_groups=32,
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


def ensure_tiny_base(seed: int = 0) -> Path:
    """Return the tiny base's folder under the build folder, building it first if it is missing."""
    from .paths import build_dir

    path = build_dir() / "tiny-sd"
    if not is_complete_base(path):
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
