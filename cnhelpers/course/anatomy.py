"""The anatomy of a ControlNet made from a UNet (notebook 02): which parameters are copied and which are new,
the zero convolutions, and how the first gradients reach the copied encoder.
"""

from __future__ import annotations

import copy

import torch

from ..losses import controlnet_residuals, predict_noise


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
    "unet_only": "UNet only (decoder)",
}


#: What ``ControlNetModel.__init__`` zero-initialises, by parameter name: the zero convolutions.
ZERO_INITIALISED = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")


def copied_and_new_parameters(unet, controlnet) -> dict[str, list[str]]:
    """Sort every parameter name of a ControlNet made from ``unet`` by where its value came from.

    - ``copied``: also in the UNet, with an identical value (conv_in, time embedding, down and mid blocks);
    - ``changed``: also in the UNet, but a different value (after training, or not made from this UNet);
    - ``new_zero``: only in the ControlNet and all zeros (the zero convolutions);
    - ``new``: only in the ControlNet, randomly initialised (the conditioning embedding's other layers);
    - ``unet_only``: in the UNet but not the ControlNet (its decoder half: up blocks, output layers).

    On the meta device values cannot be compared: names in both count as ``copied`` (what ``from_unet``
    copies), and names only in the ControlNet are sorted by name into what ``ControlNetModel.__init__``
    zero-initialises (:data:`ZERO_INITIALISED`) and the rest (``tests/test_controlnet_init.py`` checks on a real
    ControlNet that the names and the values agree).
    """
    unet_params = dict(unet.named_parameters())
    result: dict[str, list[str]] = {kind: [] for kind in PARAMETER_KINDS}
    for name, param in controlnet.named_parameters():
        if name in unet_params:
            other = unet_params[name]
            same = param.is_meta or other.is_meta or (param.shape == other.shape and torch.equal(param, other))
            result["copied" if same else "changed"].append(name)
        else:
            zero = name.startswith(ZERO_INITIALISED) if param.is_meta else _is_zero(param)
            result["new_zero" if zero else "new"].append(name)
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


def gradient_norms(controlnet) -> dict[str, float]:
    """The norm of the gradient that reached each of :data:`GRADIENT_GROUPS` (0.0: none), after ``backward()``.

    Notebook 02 (its three AdamW steps, written out)."""
    norms = {}
    for group, belongs in GRADIENT_GROUPS.items():
        grads = [p.grad for n, p in controlnet.named_parameters() if belongs(n) and p.grad is not None]
        norms[group] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
    return norms


def gradient_flow_steps(unet, controlnet, inputs: dict, steps: int = 3, learning_rate: float = 1e-4) -> list[dict]:
    """Train a copy of ``controlnet`` for a few AdamW steps on one batch and record, before each step,
    the loss, the largest residual and the gradient norm of each of :data:`GRADIENT_GROUPS`.

    The UNet stays frozen, as in ControlNet training. At the first step only the zero convolutions get a
    gradient (their inputs are not zero); a zero layer blocks the gradient to the layers before it until
    a step has moved it away from zero, so the gradient reaches one zero layer deeper per step.
    """
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
        history.append({"step": step, "loss": loss.item(),
                        "max_residual": max(float(r.detach().abs().max()) for r in (*down, mid)),
                        **gradient_norms(controlnet)})
        optimizer.step()
    return history


def measured_residual_reuse(transformer, num_residuals: int, inputs: dict) -> list[int | None]:
    """Which ControlNet residual each joint block of an SD3 ``transformer`` adds, measured: residual ``k`` is filled
    with the value ``k + 1``, and what reaches the next layer minus what the block returned names the residual
    (None: the block adds none). ``inputs`` are the transformer's keyword arguments (``hidden_states``,
    ``timestep``, ``encoder_hidden_states``, ``pooled_projections``).

    Notebook 08.
    """
    blocks = list(transformer.transformer_blocks)
    consumers = blocks[1:] + [transformer.norm_out]
    returned, received = {}, {}
    hooks = [block.register_forward_hook(lambda m, a, out, i=i: returned.__setitem__(i, out[1].detach()))
             for i, block in enumerate(blocks)]
    hooks += [layer.register_forward_pre_hook(
        lambda m, args, kwargs, i=i: received.__setitem__(i, (kwargs.get("hidden_states") if args == () else args[0])
                                                         .detach()), with_kwargs=True)
        for i, layer in enumerate(consumers)]
    tokens = inputs["hidden_states"].shape[-1] // transformer.config.patch_size
    shape = (inputs["hidden_states"].shape[0], tokens * tokens, transformer.inner_dim)
    residuals = [torch.full(shape, float(k + 1)) for k in range(num_residuals)]
    try:
        with torch.no_grad():
            transformer(**inputs, block_controlnet_hidden_states=residuals, return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
    found = []
    for i in range(len(blocks)):
        added = (received[i] - returned[i]).mean().item()
        found.append(None if abs(added) < 1e-3 else round(added) - 1)
    return found


@torch.no_grad()
def condition_share(embedding, conditions: torch.Tensor) -> list[float]:
    """How much of a conditioning embedding's features depend on the image, layer by layer (notebook 03).

    ``embedding`` is a ControlNet's ``controlnet_cond_embedding``; ``conditions`` a batch of different conditioning
    images (N, 3, H, W, in [0, 1]). For each convolution before ``conv_out``: the norm of its output about the
    batch's mean over the norm of its output (0: every image gives the same features; SiLU in between, as in the
    embedding's forward)."""
    def share(features):
        return float((features - features.mean(0)).norm() / features.norm())

    features = embedding.conv_in(conditions)
    shares = [share(features)]
    for conv in embedding.blocks:
        features = conv(torch.nn.functional.silu(features))
        shares.append(share(features))
    return shares
