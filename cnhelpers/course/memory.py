"""Measuring memory (notebook 04): live tensor and gradient bytes counted op by op, the peak of a device, the
memory ladder of training flags, the DeepSpeed ZeRO-2 config, and which flags fit a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


class LiveGradientBytes:
    """Measures the bytes of gradients alive, each time backward writes one of ``params``' gradients.

    ``timeline`` has one entry per gradient written (the live total just after it arrived); ``peak_bytes`` is
    their maximum. Create it *before* an :class:`OptimizerInBackward` over the same parameters: hooks run in
    the order they were registered, so this one sees each gradient before the optimizer frees it.
    """

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.timeline: list[int] = []
        self.hooks = [p.register_post_accumulate_grad_hook(self._record) for p in self.params]

    def _record(self, param):
        self.timeline.append(sum(p.grad.nbytes for p in self.params if p.grad is not None))

    @property
    def peak_bytes(self) -> int:
        return max(self.timeline, default=0)

    def remove(self):
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


#: CUDA's caching allocator hands out blocks in multiples of 512 bytes; max_memory_allocated counts blocks.
CUDA_BLOCK_BYTES = 512


class LiveTensorBytes:
    """Counts the bytes of tensors alive, op by op, on any device: what a GPU's ``max_memory_allocated`` counts.

    Inside ``with LiveTensorBytes() as count:``, every tensor an operation creates on ``device`` (a device type;
    None: any) is counted until it is freed, each storage once, rounded up to CUDA's 512-byte blocks.
    ``peak_bytes`` is the peak since entering, or since :meth:`reset_peak`; ``peak_breakdown`` splits that
    moment into weights (the parameters and buffers of modules), gradients, optimizer state, and activations and
    temporaries. So a CPU run of a training step tells how much a GPU would need for its tensors. Not counted:
    memory that is not a tensor (a GPU's kernel workspaces, the CUDA context, the allocator's cache), and tensors
    made outside the block unless they are the weights of a module that runs a forward pass inside it.
    """

    CATEGORIES = ("weights", "gradients", "optimizer state", "activations and temporaries")

    def __init__(self, device: str | None = None):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        count = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                count._register_tree(result)
                return result

        self._mode = _Mode()
        self.device = device
        self._storages = {}  # id(storage) -> [bytes, category]
        self._refs = {}  # id(storage) -> weakref to it, whose callback uncounts it when the storage is freed
        self._hooked_params = WeakIdKeyDictionary()  # parameters whose gradients are filed as gradients
        self._handles = []
        self.current = dict.fromkeys(self.CATEGORIES, 0)
        self.peak_bytes = 0
        self.peak_breakdown = dict(self.current)

    @property
    def current_bytes(self) -> int:
        return sum(self.current.values())

    def reset_peak(self):
        """Start a new peak from what is alive now (e.g. once the first training step has made the optimizer state).

        Also files as weights what is counted already and belongs to a module, including modules no forward pass
        has met (SD's VAE decoder, loaded but unused in training, would stay among the temporaries otherwise).
        """
        import gc

        for module in [obj for obj in gc.get_objects() if isinstance(obj, torch.nn.Module)]:
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if tensor.device.type != "meta" and id(tensor.untyped_storage()) in self._storages:
                    self._register(tensor, "weights")
        self.peak_bytes, self.peak_breakdown = self.current_bytes, dict(self.current)

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [register_module_forward_pre_hook(self._module_pre_forward),
                         register_optimizer_step_post_hook(self._optimizer_stepped)]
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _register_tree(self, tree, category=None):
        from torch.utils._pytree import tree_leaves

        for leaf in tree_leaves(tree):
            if isinstance(leaf, torch.Tensor):
                self._register(leaf, category)

    def _register(self, tensor, category=None):
        """Count ``tensor``'s storage if it is new; give it ``category`` if one is named."""
        import weakref

        if tensor.device.type == "meta" or (self.device is not None and tensor.device.type != self.device):
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. a tensor subclass without a storage of its own
            return
        key = id(storage)
        entry = self._storages.get(key)
        if entry is None:
            nbytes = -(-storage.nbytes() // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
            entry = self._storages[key] = [nbytes, category or "activations and temporaries"]
            self._refs[key] = weakref.ref(storage, lambda _, key=key: self._forget(key))
            self.current[entry[1]] += nbytes
        elif category is not None and entry[1] != category and entry[1] != "weights":
            self.current[entry[1]] -= entry[0]
            self.current[category] += entry[0]
            entry[1] = category
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes, self.peak_breakdown = self.current_bytes, dict(self.current)

    def _forget(self, key):
        self._refs.pop(key, None)
        entry = self._storages.pop(key, None)
        if entry is not None:
            self.current[entry[1]] -= entry[0]

    def _module_pre_forward(self, module, inputs):
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            self._register(tensor, "weights")
        for param in module.parameters(recurse=False):
            if param.requires_grad and param not in self._hooked_params:
                self._hooked_params[param] = True
                self._handles.append(param.register_post_accumulate_grad_hook(self._gradient_written))

    def _gradient_written(self, param):
        # Runs after hooks registered earlier: with the step in backward the gradient is already gone.
        if param.grad is not None:
            self._register(param.grad, "gradients")

    def _optimizer_stepped(self, optimizer, args, kwargs):
        # What the step keeps is the state; what it made and freed on the way were temporaries.
        self._register_tree(list(optimizer.state.values()), "optimizer state")


@dataclass(frozen=True)
class Rung:
    """One rung of the memory ladder: the training flags it adds, and what the guide reports for it."""

    number: int
    name: str
    flags: dict = field(default_factory=dict)
    #: The diffusers ControlNet guide's figure (GB, SD 1.5 at 512 px), where it gives one.
    guide_gb: float | None = None
    #: What the rung needs to run: "fp16" (its autocast runs on CUDA GPUs only), "cuda", "deepspeed",
    #: "bitsandbytes" (8-bit AdamW), or "bf16" (where a GPU is used).
    needs: tuple = ()
    #: Flags this rung removes from the ones before it (they go back to their defaults).
    drops: tuple = ()


#: Bumped when rungs are renumbered or change their flags: result files of another version are refused.
LADDER_VERSION = 2

LADDER = (
    # Rungs 1-4 and 9 are the diffusers ControlNet guide's own configurations (its batch sizes and flags), so
    # its figures sit beside them; rungs 5-8 are the course's further steps. The flags are cumulative.
    Rung(1, "fp32 AdamW, batch 4 (upstream's defaults)", {"cache": "never", "train_batch_size": 4}, guide_gb=38.0),
    Rung(2, "batch 1, 4 micro-batches accumulated", {"train_batch_size": 1, "gradient_accumulation_steps": 4},
         guide_gb=20.0),
    Rung(3, "+ gradient checkpointing + 8-bit AdamW", {"gradient_checkpointing": True, "use_8bit_adam": True},
         guide_gb=16.0, needs=("bitsandbytes",)),
    # The guide's 12 GB rung also turns on xFormers; PyTorch's SDPA, memory-efficient already, is on from rung 1.
    Rung(4, "+ grads set to None", {"set_grads_to_none": True}, guide_gb=12.0),
    Rung(5, "+ checkpointing the frozen UNet too", {"checkpoint_frozen_unet": True}),
    Rung(6, "+ fp16 mixed precision", {"mixed_precision": "fp16"}, needs=("fp16",)),
    Rung(7, "+ cached latents and text embeddings", {"cache": "always"}),
    # The step in backward cannot accumulate, clip by the global norm, nor use fp16's loss scaler: rung 8
    # turns accumulation and clipping off, and rung_flags makes rung 6's fp16 bf16 for it.
    Rung(8, "+ optimizer step in backward, no accumulation", {"optimizer_in_backward": True, "max_grad_norm": 0},
         needs=("bf16",), drops=("gradient_accumulation_steps",)),
    # The guide's 8 GB rung: ZeRO-2 with the optimizer offloaded to the CPU, on rung 4's flags and fp16 (here
    # with the cache of rung 7 too, as measured); DeepSpeed's CPU Adam replaces 8-bit AdamW.
    Rung(9, "ZeRO-2 CPU offload (DeepSpeed), no 8-bit Adam", {"gradient_accumulation_steps": 4}, guide_gb=8.0,
         needs=("cuda", "deepspeed"),
         drops=("use_8bit_adam", "checkpoint_frozen_unet", "optimizer_in_backward", "max_grad_norm")),
)


def rung_flags(number: int, use_xformers: bool = False, skipped=(), half: str = "fp16") -> dict:
    """The training flags of a rung: its own and those of every rung below it but the ``skipped`` ones.

    ``half="bf16"`` runs the fp16 rungs in bf16 instead: the same 2 bytes a value, and it runs on a CPU
    (accelerate autocasts fp16 on GPUs only), so a CPU can count what those rungs keep in memory.
    """
    flags: dict = {}
    for rung in LADDER[:number]:
        if rung.number in skipped and rung.number != number:
            continue
        flags.update(rung.flags)
        for dropped in rung.drops:
            flags.pop(dropped, None)
    if half == "bf16" and flags.get("mixed_precision") == "fp16":
        flags["mixed_precision"] = "bf16"
    if flags.get("optimizer_in_backward") and flags.get("mixed_precision") == "fp16":
        flags["mixed_precision"] = "bf16"  # fp16's loss scaler needs every gradient before the first update
    if use_xformers:
        flags["enable_xformers_memory_efficient_attention"] = True
    return flags


def missing_requirements(rung: Rung, half: str = "fp16") -> str | None:
    """Why a rung cannot run on this machine (a sentence), or None when it can (``half`` as in :func:`rung_flags`)."""
    import importlib.util

    needs = {"bf16" if need == "fp16" and half == "bf16" else need for need in rung.needs}
    if needs & {"cuda", "fp16"} and not torch.cuda.is_available():
        return "needs a CUDA GPU (fp16 autocast and DeepSpeed's offload run on GPUs)"
    if "bf16" in needs and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        why = "fp16's loss scaler does not combine with the step in backward" if rung.flags.get(
            "optimizer_in_backward") else "or run it in fp16"
        return f"needs bf16 on this GPU (Ampere or newer): {why}"
    if "deepspeed" in rung.needs and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed (`pip install deepspeed`)"
    if "bitsandbytes" in rung.needs and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (`pip install bitsandbytes`, or cnhelpers' memory extra)"
    return None


def deepspeed_accelerate_config(gradient_accumulation_steps: int = 4, mixed_precision: str = "fp16",
                                offload_optimizer_device: str = "cpu", offload_param_device: str = "none",
                                zero_stage: int = 2, num_processes: int = 1, zero3_init_flag: bool = False,
                                zero3_save_16bit_model: bool = False) -> dict:
    """The accelerate config for DeepSpeed ZeRO with CPU offload, as in the diffusers ControlNet guide.

    ZeRO stage 2 partitions optimizer state and gradients; with ``offload_optimizer_device: cpu`` the
    optimizer state lives in CPU memory and the Adam update runs on the CPU (DeepSpeedCPUAdam, which
    accelerate puts in place of torch's AdamW). bitsandbytes' 8-bit Adam keeps its state on the GPU and is
    not a DeepSpeed optimizer, so it does not combine with the offload: the state leaves the GPU instead.
    ``offload_param_device`` moves the weights, which only ZeRO stage 3 partitions: under stage 2 it does
    nothing (the guide's YAML sets it to ``cpu`` all the same), so it is ``none`` unless ``zero_stage=3``.
    ZeRO-3 partitions the weights too: ``zero3_init_flag`` builds them partitioned, and ``zero3_save_16bit_model``
    gathers them into one 16-bit file when the model is saved (:data:`FLUX_ZERO3`).
    """
    return {
        "compute_environment": "LOCAL_MACHINE",
        "deepspeed_config": {
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "offload_optimizer_device": offload_optimizer_device,
            "offload_param_device": offload_param_device,
            "zero3_init_flag": zero3_init_flag,
            **({"zero3_save_16bit_model": True} if zero3_save_16bit_model else {}),
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


#: Upstream's Flux recipe for several GPUs (examples/controlnet/README_flux.md, "Apply Deepspeed Zero3": 512 px on
#: 8 x A100-40GB): ZeRO-3 with the optimizer state and the weights offloaded to the CPU, bf16, 8 micro-batches
#: accumulated. ``write_deepspeed_config(path, **FLUX_ZERO3)`` writes its accelerate config; launch with
#: ``accelerate launch --config_file PATH -m cnhelpers.train --cache always ...`` (upstream pre-computes the
#: latents and text embeddings for it, as the course's cache does). accelerate runs DeepSpeed on GPUs only.
FLUX_ZERO3 = dict(gradient_accumulation_steps=8, mixed_precision="bf16", offload_optimizer_device="cpu",
                  offload_param_device="cpu", zero_stage=3, zero3_init_flag=True, zero3_save_16bit_model=True,
                  num_processes=8)


def write_deepspeed_config(path, **options):
    """Write :func:`deepspeed_accelerate_config` as YAML for ``accelerate launch --config_file PATH``."""
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
        self.cuda = torch.cuda.is_available()
        self.peak_bytes = 0

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> int:
        import resource

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
    ``grads``: False with the optimizer step in backward (one parameter's gradient at a time, counted as 0).
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
    """Rows of measured ladders (JSON files of benchmarks/memory_ladder.py); a later file's rung replaces an earlier one's.

    Only files of today's :data:`LADDER_VERSION` are read (older ones numbered the rungs differently:
    ``benchmarks/relabel_ladder.py`` maps them). A rung that no file measured comes as a row with ``peak_gb``
    None and ``skipped`` saying so (never a number).
    """
    import json
    rows: dict[int, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        if data.get("ladder_version") != LADDER_VERSION:
            raise ValueError(f"{Path(path).name} was measured on ladder version {data.get('ladder_version', 1)}, "
                             f"today's is {LADDER_VERSION}: relabel it (benchmarks/relabel_ladder.py) or measure again.")
        for row in data["rows"]:
            rows[row["rung"]] = row | {"source": Path(path).name, "device": data.get("device")}
    for rung in LADDER:
        rows.setdefault(rung.number, {"rung": rung.number, "name": rung.name, "guide_gb": rung.guide_gb,
                                      "peak_gb": None, "s_per_step": None, "skipped": "not measured yet",
                                      "source": None, "device": None})
    return [rows[n] for n in sorted(rows)]
