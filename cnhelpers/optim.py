"""The optimizer side of the loop: attention backend, AdamW or 8-bit AdamW, the optimizer step fused into the
backward pass (:class:`OptimizerInBackward`), and the state layout after a resume.
"""

from __future__ import annotations

import torch


def xformers_available() -> bool:
    """True when the xformers package can be imported."""
    from diffusers.utils.import_utils import is_xformers_available

    return is_xformers_available()


def configure_attention(use_xformers: bool, *models) -> str:
    """Use xFormers attention in ``models`` when ``use_xformers`` (``--enable_xformers_memory_efficient_attention``).

    Otherwise diffusers already uses PyTorch's scaled_dot_product_attention (SDPA), which on a recent GPU
    picks a memory-efficient or flash kernel by itself. Returns the backend's name.
    """
    if not use_xformers:
        return "sdpa"
    if not xformers_available():
        raise ValueError(
            "--enable_xformers_memory_efficient_attention was given, but xformers is not installed. "
            "PyTorch's SDPA attention (the default without this flag) saves about as much memory; "
            "or `pip install xformers` matching your torch and CUDA versions.")
    for model in models:
        model.enable_xformers_memory_efficient_attention()
    return "xformers"


def make_optimizer(params, *, learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
                   epsilon: float = 1e-8, weight_decay: float = 1e-2, use_8bit: bool = False,
                   in_backward: bool = False):
    """AdamW, or bitsandbytes' 8-bit AdamW with ``use_8bit`` (``--use_8bit_adam``: its state is stored as uint8).

    With ``in_backward`` (``--optimizer_in_backward``), one such optimizer per parameter, stepped inside the
    backward pass (:class:`OptimizerInBackward`). The defaults are those of train_controlnet.py's flags
    (``--adam_beta1``, ``--adam_beta2``, ``--adam_epsilon``, ``--adam_weight_decay``); ``learning_rate`` has none,
    since the right one depends on the run.
    """
    def make_one(some_params):
        return make_one_optimizer(some_params, learning_rate=learning_rate, betas=betas, epsilon=epsilon,
                                  weight_decay=weight_decay, use_8bit=use_8bit)

    if in_backward:
        return OptimizerInBackward(params, make_one)
    return make_one(params)


def make_one_optimizer(params, *, learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
                       epsilon: float = 1e-8, weight_decay: float = 1e-2, use_8bit: bool = False):
    """The AdamW (8-bit with ``use_8bit``) of :func:`make_optimizer` for ``params`` (all of them, or a single one)."""
    if use_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`.") from error
        return bnb.optim.AdamW8bit(params, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=epsilon)
    # fused: one kernel for all parameters instead of a Python loop over them (same arithmetic)
    return torch.optim.AdamW(params, lr=learning_rate, betas=betas, weight_decay=weight_decay, eps=epsilon,
                             fused=True)


class OptimizerInBackward(torch.optim.Optimizer):
    """The optimizer step fused into the backward pass: at most one gradient is alive at a time.

    PyTorch's recipe: one optimizer per parameter (``make_one([param])``), and a hook
    (``register_post_accumulate_grad_hook``) that, as soon as backward has written a parameter's gradient,
    steps that parameter's optimizer and frees the gradient. So the whole fp32 gradient buffer (as large as
    the trained model) never exists at once. What it costs: no gradient accumulation (each backward updates
    the weights), no clipping by the global gradient norm (it needs every gradient before the first update),
    no fp16 loss scaler (it must see every gradient to decide to skip a step), one process only (DDP averages
    gradients after the hook has fired). :func:`check_optimizer_in_backward` refuses those.

    To the training loop, the LR scheduler and ``accelerator.save_state`` it is one optimizer: its
    ``param_groups`` are the per-parameter optimizers' groups (the same dicts, so the scheduler's learning
    rate reaches every one of them), and ``state_dict()`` holds all their states, one group per parameter.
    ``step()`` does no arithmetic (backward did it): it closes the step, and is called after backward as usual.
    """

    def __init__(self, params, make_one):
        parameters = [p for p in params if p.requires_grad]
        self.optimizers = [make_one([p]) for p in parameters]
        super().__init__([optimizer.param_groups[0] for optimizer in self.optimizers], {})
        self._index = {p: i for i, p in enumerate(parameters)}
        self._stepped: set[int] = set()
        self.hooks = [p.register_post_accumulate_grad_hook(self._step_parameter) for p in parameters]

    @torch.no_grad()
    def _step_parameter(self, param):
        i = self._index[param]
        if i in self._stepped:
            raise RuntimeError(
                f"Parameter {i} of {len(self.optimizers)} received a second gradient before optimizer.step() "
                "closed the step: with the optimizer step in backward each parameter is updated once per "
                "backward pass, so gradients cannot be accumulated over several backward passes. Call "
                "optimizer.step() after each backward, or drop --optimizer_in_backward.")
        self._stepped.add(i)
        self.optimizers[i].step()
        self.optimizers[i].zero_grad(set_to_none=True)

    def step(self, closure=None):
        """Close the step: the parameters were updated during backward, as their gradients arrived."""
        self._stepped.clear()
        return None if closure is None else closure()

    def remove_hooks(self):
        """Detach from the parameters (their gradients then stay, as with a usual optimizer)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def state_dict(self) -> dict:
        """Every per-parameter optimizer's state, as one optimizer with one group per parameter."""
        state, groups = {}, []
        for i, optimizer in enumerate(self.optimizers):
            own = optimizer.state_dict()
            if 0 in own["state"]:
                state[i] = own["state"][0]
            groups.append(own["param_groups"][0] | {"params": [i]})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.optimizers):
            raise ValueError(f"This optimizer state is for {len(groups)} parameter groups, but the optimizer "
                             f"in backward has {len(self.optimizers)} parameters: resume with the flags "
                             "(--optimizer_in_backward or not) of the run that saved it.")
        for i, optimizer in enumerate(self.optimizers):
            own_state = {0: state_dict["state"][i]} if i in state_dict["state"] else {}
            optimizer.load_state_dict({"state": own_state, "param_groups": [groups[i] | {"params": [0]}]})
        # load_state_dict gives each optimizer new group dicts: share them again with the scheduler
        self.param_groups = [optimizer.param_groups[0] for optimizer in self.optimizers]


def check_optimizer_in_backward(accelerator, max_grad_norm: float, *, in_backward: bool = True) -> None:
    """Refuse the optimizer step in backward (``--optimizer_in_backward``) with what it cannot do, naming the fix:
    DeepSpeed, several processes, gradient accumulation, clipping (``max_grad_norm``, ``--max_grad_norm``), fp16.
    No-op when ``in_backward`` is False (the flag not given)."""
    from accelerate.utils import DistributedType

    if not in_backward:
        return
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("--optimizer_in_backward does not combine with DeepSpeed: ZeRO owns the gradients and "
                         "the optimizer step (it partitions and offloads them). Use one or the other: drop "
                         "--optimizer_in_backward, or launch without the DeepSpeed config.")
    if accelerator.num_processes > 1:
        raise ValueError(
            f"--optimizer_in_backward runs on one process only, and {accelerator.num_processes} were started: each "
            "gradient must be averaged over the processes (DDP's all-reduce) before the update, but the hook "
            "updates the parameter before that. Launch one process, or drop --optimizer_in_backward.")
    if accelerator.gradient_accumulation_steps > 1:
        raise ValueError(
            f"--optimizer_in_backward cannot accumulate gradients (--gradient_accumulation_steps "
            f"{accelerator.gradient_accumulation_steps}): each backward pass updates the weights and frees the "
            "gradients. Use --gradient_accumulation_steps 1 (and a larger --train_batch_size if it fits), or "
            "drop --optimizer_in_backward.")
    if max_grad_norm:
        raise ValueError(
            f"--optimizer_in_backward cannot clip gradients by their global norm (--max_grad_norm "
            f"{max_grad_norm:g}): the norm needs every gradient, and each parameter is updated before the "
            "next gradient exists. Pass --max_grad_norm 0 (no clipping), or drop --optimizer_in_backward.")
    if accelerator.mixed_precision == "fp16":
        raise ValueError(
            "--optimizer_in_backward does not work with --mixed_precision fp16: fp16's loss scaler must see every "
            "gradient to decide whether to skip the step (one inf skips it all), and by then the parameters are "
            "updated. Use --mixed_precision bf16 (no loss scaler; Ampere and newer GPUs, and CPUs) or no.")


def match_state_layout(optimizer):
    """Give every optimizer state tensor the memory layout of its parameter, after loading a checkpoint.

    Fused AdamW on a CPU walks a parameter and its state as flat memory: a channels-last parameter with
    a state saved in the default layout (say, by a GPU run) would pair the wrong elements, silently.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param).copy_(value)
