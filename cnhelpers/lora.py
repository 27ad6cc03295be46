"""A LoRA ControlNet (``--lora_rank``): low-rank adapters on the blocks the ControlNet copied from the denoiser,
while the parts that a ControlNet adds, the conditioning embedding and the zero convolutions, train in full.

diffusers' ControlNet classes take peft adapters (``PeftAdapterMixin.add_adapter``); which modules are copied blocks
and which are the ControlNet's own is the base family's knowledge (:meth:`cnhelpers.families.Family.lora_layout`).

Saved (:func:`save_controlnet`) in two forms, side by side:

- the ControlNet with its adapters merged into the weights (``diffusion_pytorch_model.safetensors`` and
  ``config.json``), which ``ControlNetModel.from_pretrained`` and every pipeline load as any ControlNet;
- ``lora/``: the adapters as diffusers' ``save_lora_adapter`` writes them (``pytorch_lora_weights.safetensors``, its
  LoraConfig in the file's metadata) and the fully trained modules (:data:`FULL_MODULES_FILE`): a few percent of the
  ControlNet's size for SD 1.5. :func:`load_lora_controlnet` loads them back onto a ControlNet made from the base's
  denoiser (``from_unet`` + ``load_lora_adapter``), as diffusers 0.42 supports; checkpoints resume from them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

#: The adapter's name (peft's default).
ADAPTER = "default"
#: The subfolder of a saved LoRA ControlNet that holds its adapters and its fully trained modules.
LORA_FOLDER = "lora"
#: diffusers' file name for the adapters (``save_lora_adapter``'s default, what ``load_lora_adapter`` reads).
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
#: The fully trained modules (conditioning embedding, zero convolutions), under the ControlNet's own keys.
FULL_MODULES_FILE = "controlnet_full_modules.safetensors"


def check_lora_flags(rank: int | None, alpha: float | None) -> None:
    """Refuse, in one line, a LoRA rank or alpha that cannot work."""
    if rank is None:
        if alpha is not None:
            raise ValueError("--lora_alpha scales a LoRA's update: give --lora_rank too (e.g. --lora_rank 8), or leave "
                             "--lora_alpha out.")
        return
    if rank < 1:
        raise ValueError(f"--lora_rank must be at least 1, got {rank}: try 4 to 64 (leave it out to train the whole "
                         "ControlNet).")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"--lora_alpha must be positive, got {alpha:g}: the update is scaled by alpha / rank (leave it "
                         "out for alpha = rank).")


def has_lora(model) -> bool:
    """True when ``model`` carries a peft adapter (a LoRA ControlNet)."""
    return bool(getattr(model, "peft_config", None))


def lora_targets(controlnet, copied_blocks: tuple[str, ...]) -> list[str]:
    """The linear and convolution layers of ``controlnet`` under ``copied_blocks`` (top-level module names)."""
    return [name for name, module in controlnet.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name.split(".")[0] in copied_blocks]


def add_controlnet_lora(controlnet, layout, rank: int, alpha: float | None = None) -> dict:
    """Give ``controlnet`` LoRA adapters of ``rank`` (scale ``alpha / rank``; alpha defaults to the rank) on the
    layers of its copied blocks, and train in full the modules ``layout`` lists as its own; everything else is
    frozen. ``layout`` is ``(copied_blocks, full_modules)`` (:meth:`cnhelpers.families.Family.lora_layout`).

    The adapters start as LoRA's usual ``B = 0``, so the ControlNet begins as the copy it was (and, with its zero
    convolutions, adds nothing). Returns ``{"trainable", "adapter", "full", "total"}`` parameter counts.
    """
    from peft import LoraConfig

    check_lora_flags(rank, alpha)
    copied_blocks, full_modules = layout
    targets = lora_targets(controlnet, copied_blocks)
    if not targets:
        raise ValueError(f"This ControlNet has no linear or convolution layer under {', '.join(copied_blocks)}: "
                         "--lora_rank cannot train it; leave --lora_rank out.")
    controlnet.requires_grad_(False)
    # A regular expression matched against each full module name: an exact list (peft also matches name suffixes,
    # which would reach the conditioning embedding's own conv_in).
    pattern = "^(" + "|".join(re.escape(name) for name in targets) + ")$"
    controlnet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=pattern,
                                      init_lora_weights=True), adapter_name=ADAPTER)
    full = 0
    for name in full_modules:
        module = controlnet.get_submodule(name)
        module.requires_grad_(True)
        full += sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in controlnet.parameters() if p.requires_grad)
    total = sum(p.numel() for p in controlnet.parameters())
    return {"trainable": trainable, "adapter": trainable - full, "full": full, "total": total}


def merged_state_dict(controlnet) -> dict[str, torch.Tensor]:
    """The LoRA ControlNet's weights with each adapter merged in (``W + B A * alpha / rank``), under the plain
    ControlNet's keys: what ``from_pretrained`` of its class reads. The model itself is left as it is."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = {name: module for name, module in controlnet.named_modules() if isinstance(module, BaseTunerLayer)}
    state = {}
    for key, value in controlnet.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach()
    with torch.no_grad():
        for name, module in tuned.items():
            weight = module.get_base_layer().weight
            state[f"{name}.weight"] = (weight + module.get_delta_weight(ADAPTER).to(weight.dtype)).detach()
    return {key: value.contiguous() for key, value in state.items()}


def full_modules_state(controlnet) -> dict[str, torch.Tensor]:
    """The weights of the LoRA ControlNet's fully trained modules (the top-level modules with a trainable parameter
    outside the adapters: conditioning embedding, zero convolutions), under the ControlNet's keys."""
    full = {name.split(".")[0] for name, p in controlnet.named_parameters() if p.requires_grad and ".lora_" not in name}
    return {key: value.detach().contiguous() for key, value in controlnet.state_dict().items()
            if key.split(".")[0] in full}


def save_controlnet(controlnet, folder) -> None:
    """Save ``controlnet`` into ``folder`` in diffusers format: ``save_pretrained`` for a plain one; for a LoRA
    ControlNet (:func:`add_controlnet_lora`), the merged weights and config (loaded as any ControlNet) and ``lora/``
    (the adapters as ``save_lora_adapter`` writes them, and the fully trained modules' weights)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if not has_lora(controlnet):
        controlnet.save_pretrained(folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    controlnet.save_config(folder)
    save_file(merged_state_dict(controlnet), folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # (its ``to(dtype=None)`` warns of float32 modules that there are none of)
    try:
        controlnet.save_lora_adapter(folder / LORA_FOLDER, adapter_name=ADAPTER, weight_name=ADAPTER_FILE)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    save_file(full_modules_state(controlnet), folder / LORA_FOLDER / FULL_MODULES_FILE,
              metadata={"format": "pt"})


def load_lora_state(controlnet, folder) -> None:
    """Load the adapters and fully trained modules saved in ``folder/lora`` (:func:`save_controlnet`) into a LoRA
    ControlNet of the same rank and layers (a checkpoint's, when a run resumes)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    lora = Path(folder) / LORA_FOLDER
    if not (lora / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no LoRA adapters ({LORA_FOLDER}/{ADAPTER_FILE}): it was saved by a "
                                "run without --lora_rank; resume it without --lora_rank, or start a new run.")
    result = set_peft_model_state_dict(controlnet, load_file(lora / ADAPTER_FILE), adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"The LoRA adapters in {lora} do not fit this ControlNet ({len(unexpected)} unexpected keys, "
                         f"e.g. {unexpected[0]}): resume with the --lora_rank the run was started with.")
    missing, unexpected = controlnet.load_state_dict(load_file(lora / FULL_MODULES_FILE), strict=False)
    if unexpected:
        raise ValueError(f"{lora / FULL_MODULES_FILE} does not fit this ControlNet ({unexpected[0]}).")


def load_lora_controlnet(denoiser, folder, controlnet_class=None):
    """A LoRA ControlNet saved by :func:`save_controlnet` in ``folder``, loaded as diffusers 0.42 loads a LoRA: a
    ControlNet made from the base's ``denoiser`` (``from_unet``), its adapters from ``folder/lora`` with
    ``load_lora_adapter`` (their rank, alpha and layers read from the file's metadata), then its fully trained
    modules. Call ``fuse_lora()`` on the result to merge the adapters for faster inference.
    """
    from safetensors.torch import load_file

    if controlnet_class is None:
        from diffusers import ControlNetModel as controlnet_class
    lora = Path(folder) / LORA_FOLDER
    if not (lora / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no LoRA adapters ({LORA_FOLDER}/{ADAPTER_FILE}): load it with "
                                "ControlNetModel.from_pretrained, or train with --lora_rank.")
    controlnet = controlnet_class.from_unet(denoiser)
    controlnet.load_lora_adapter(str(lora), weight_name=ADAPTER_FILE, prefix=None, adapter_name=ADAPTER)
    _, unexpected = controlnet.load_state_dict(load_file(lora / FULL_MODULES_FILE), strict=False)
    if unexpected:
        raise ValueError(f"{lora / FULL_MODULES_FILE} does not fit this ControlNet ({unexpected[0]}).")
    return controlnet


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: all of a plain ControlNet's, a LoRA ControlNet's adapters and full
    modules."""
    return [p for p in model.parameters() if p.requires_grad]
