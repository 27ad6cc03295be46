"""Memory options of the training loop: attention backend and optimizer (notebook 04 adds the rest)."""

from __future__ import annotations


def xformers_available() -> bool:
    """True when the xformers package can be imported."""
    from diffusers.utils.import_utils import is_xformers_available

    return is_xformers_available()


def configure_attention(args, *models) -> str:
    """Use xFormers attention when ``--enable_xformers_memory_efficient_attention`` asks for it.

    Otherwise diffusers already uses PyTorch's scaled_dot_product_attention (SDPA), which on a recent GPU
    picks a memory-efficient or flash kernel by itself. Returns the backend's name.
    """
    if not getattr(args, "enable_xformers_memory_efficient_attention", False):
        return "sdpa"
    if not xformers_available():
        raise ValueError(
            "--enable_xformers_memory_efficient_attention was given, but xformers is not installed. "
            "PyTorch's SDPA attention (the default without this flag) saves about as much memory; "
            "or `pip install xformers` matching your torch and CUDA versions.")
    for model in models:
        model.enable_xformers_memory_efficient_attention()
    return "xformers"


def make_optimizer(args, params):
    """AdamW, or bitsandbytes' 8-bit AdamW with ``--use_8bit_adam`` (its state is stored as uint8)."""
    import torch

    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`.") from error
        return bnb.optim.AdamW8bit(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                   weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # fused: one kernel for all parameters instead of a Python loop over them (same arithmetic)
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=True)
