"""Memory options of the training loop (notebook 04): attention backend, optimizer, the memory ladder,
DeepSpeed ZeRO-2 config, peak-memory measurement and "which flags fit my GPU"."""

from __future__ import annotations

from dataclasses import dataclass, field


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


# --------------------------------------------------------------------------------------------------
# The memory ladder (notebook 04, benchmarks/memory_ladder.py)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rung:
    """One rung of the memory ladder: the training flags it adds, and what the guide reports for it."""

    number: int
    name: str
    flags: dict = field(default_factory=dict)
    #: The diffusers ControlNet guide's figure (GB, SD 1.5 at 512 px), where it gives one.
    guide_gb: float | None = None
    #: What the rung needs to run: "cuda" (fp16 autocast) or "deepspeed".
    needs: tuple = ()
    #: Flags this rung removes from the ones before it.
    drops: tuple = ()


LADDER = (
    Rung(1, "fp32 AdamW", {"cache": "never"}, guide_gb=38.0),
    Rung(2, "+ gradient accumulation (4 micro-batches)", {"gradient_accumulation_steps": 4}),
    Rung(3, "+ gradient checkpointing + 8-bit AdamW", {"gradient_checkpointing": True, "use_8bit_adam": True},
         guide_gb=16.0),
    Rung(4, "+ SDPA/xFormers attention + grads set to None", {"set_grads_to_none": True}, guide_gb=12.0),
    Rung(5, "+ fp16 mixed precision", {"mixed_precision": "fp16"}, needs=("cuda",)),
    Rung(6, "+ cached latents and text embeddings", {"cache": "always"}),
    Rung(7, "ZeRO-2 CPU offload (DeepSpeed), no 8-bit Adam", {}, guide_gb=8.0, needs=("cuda", "deepspeed"),
         drops=("use_8bit_adam",)),
)


def rung_flags(number: int, use_xformers: bool = False, skipped=()) -> dict:
    """The training flags of a rung: its own and those of every rung below it but the ``skipped`` ones."""
    flags: dict = {}
    for rung in LADDER[:number]:
        if rung.number in skipped and rung.number != number:
            continue
        flags.update(rung.flags)
        for dropped in rung.drops:
            flags.pop(dropped, None)
    if number >= 4 and use_xformers:
        flags["enable_xformers_memory_efficient_attention"] = True
    return flags


def missing_requirements(rung: Rung) -> str | None:
    """Why a rung cannot run on this machine (a sentence), or None when it can."""
    import importlib.util

    import torch

    if "cuda" in rung.needs and not torch.cuda.is_available():
        return "needs a CUDA GPU (fp16 autocast and DeepSpeed's offload run on GPUs)"
    if "deepspeed" in rung.needs and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed (`pip install deepspeed`)"
    return None


def deepspeed_accelerate_config(gradient_accumulation_steps: int = 4, mixed_precision: str = "fp16",
                                offload_optimizer_device: str = "cpu", offload_param_device: str = "cpu",
                                zero_stage: int = 2, num_processes: int = 1) -> dict:
    """The accelerate config for DeepSpeed ZeRO with CPU offload, as in the diffusers ControlNet guide.

    ZeRO stage 2 partitions optimizer state and gradients; with ``offload_optimizer_device: cpu`` the
    optimizer state lives in CPU memory and the Adam update runs on the CPU (DeepSpeedCPUAdam, which
    accelerate puts in place of torch's AdamW). bitsandbytes' 8-bit Adam keeps its state on the GPU and is
    not a DeepSpeed optimizer, so it does not combine with the offload: the state leaves the GPU instead.
    """
    return {
        "compute_environment": "LOCAL_MACHINE",
        "deepspeed_config": {
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "offload_optimizer_device": offload_optimizer_device,
            "offload_param_device": offload_param_device,
            "zero3_init_flag": False,
            "zero_stage": zero_stage,
        },
        "distributed_type": "DEEPSPEED",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": mixed_precision,
        "num_machines": 1,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }


def write_deepspeed_config(path, **options):
    """Write :func:`deepspeed_accelerate_config` as YAML for ``accelerate launch --config_file PATH``."""
    from pathlib import Path

    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(deepspeed_accelerate_config(**options), sort_keys=False))
    return path


class PeakMemory:
    """Peak memory of the training steps: CUDA's ``max_memory_allocated`` on a GPU, else this process's peak RSS.

    Call :meth:`start` once the run is set up (after the first step, so optimizer state exists) and
    :meth:`stop` at the end; ``peak_bytes`` is then the peak over that span on a GPU. On a CPU the peak RSS
    covers the whole process (imports and loading included), which is what ``ru_maxrss`` can tell.
    """

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.peak_bytes = 0

    def start(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> int:
        import resource

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self.peak_bytes


def recommend_rung(results: list[dict], gpu_memory_gb: float, headroom: float = 0.9):
    """The first (fastest-to-configure, least-compromise) rung whose measured peak fits in ``gpu_memory_gb``.

    ``results`` are rows of a measured ladder (``{"rung", "name", "peak_gb", ...}``; skipped rungs have
    ``peak_gb`` None). ``headroom`` keeps a margin for the CUDA context and fragmentation. Returns the row,
    or None when no measured rung fits.
    """
    for row in sorted(results, key=lambda r: r["rung"]):
        if row.get("peak_gb") is not None and row["peak_gb"] <= gpu_memory_gb * headroom:
            return row
    return None


def training_memory_budget(unet_params: int, controlnet_params: int, text_encoder_params: int, vae_params: int, *,
                           frozen_bytes: int = 4, optimizer_bytes: float = 8, encoders_on_device: bool = True,
                           grads: bool = True) -> dict[str, float]:
    """What the weights, gradients and optimizer state of ControlNet training take, in GB (activations aside).

    ``frozen_bytes``: 4 for fp32 frozen models, 2 when mixed precision casts them to fp16/bf16.
    ``optimizer_bytes``: AdamW keeps two fp32 moments (8 bytes a parameter); 8-bit AdamW two uint8 ones (2).
    ``encoders_on_device``: False when latents and text embeddings are cached, so VAE and text encoder leave.
    The ControlNet's own weights and gradients stay fp32 (accelerate keeps fp32 master weights).
    """
    gb = 1e9
    budget = {
        "frozen UNet": unet_params * frozen_bytes / gb,
        "VAE + text encoder": (vae_params + text_encoder_params) * frozen_bytes / gb if encoders_on_device else 0.0,
        "ControlNet weights (fp32)": controlnet_params * 4 / gb,
        "ControlNet gradients (fp32)": controlnet_params * 4 / gb if grads else 0.0,
        "optimizer state": controlnet_params * optimizer_bytes / gb,
    }
    return budget


def load_ladder_results(*paths) -> list[dict]:
    """Rows of measured ladders (JSON files of benchmarks/memory_ladder.py); a later file's rung replaces an earlier one's."""
    import json
    from pathlib import Path

    rows: dict[int, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for row in data["rows"]:
            rows[row["rung"]] = row | {"source": Path(path).name, "device": data.get("device")}
    return [rows[n] for n in sorted(rows)]
