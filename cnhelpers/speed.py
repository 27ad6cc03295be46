"""Speed knobs that keep a step's arithmetic: the models' memory layout (``--channels_last``) and their compiled
forward and backward passes (``--torch_compile``), with the checks that refuse them, in one line, where they
cannot run.

Both are off by default: compiling costs start-up time (most of it the C++ compiler's on a CPU) that only a long
run earns back, and a notebook that trains a few hundred steps never does (the figures:
``benchmarks/results/train-throughput-tiny-cpu-2026-12-01.md``).
"""

from __future__ import annotations

import importlib.util
import shutil

import torch

#: ``torch.compile``'s modes (None: its default).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_torch_compile(backend: str | None, device_type: str) -> None:
    """Refuse a ``--torch_compile`` backend that cannot run here before any model is loaded.

    Inductor, the default backend, writes C++ kernels on a CPU (it needs a C++ compiler) and Triton kernels on a
    GPU (it needs the triton package); without them it would fail only at the first step, with a long trace.
    """
    if backend is None:
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"--torch_compile {backend}: not a torch.compile backend; use one of {', '.join(known)} "
                         "(inductor, the default when the flag is given alone, is the one that makes kernels).")
    if backend != "inductor":
        return
    if device_type == "cpu" and not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        raise ValueError("--torch_compile on a CPU needs a C++ compiler (g++ or clang++), and none is on PATH: "
                         "install one (`apt install g++`), or train without --torch_compile.")
    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("--torch_compile on a GPU needs the triton package, which is not installed: "
                         "`pip install triton` (it comes with PyTorch's CUDA wheels), or train without --torch_compile.")


def memory_layout(channels_last: bool, device_type: str) -> tuple[torch.memory_format, torch.memory_format]:
    """The memory formats of (the whole models and their latents, the ControlNet's conditioning embedding).

    ``--channels_last`` puts both models in the NHWC layout that cuDNN's and oneDNN's fastest convolutions read.
    Without it, a CPU still keeps the conditioning embedding channels-last: at its few channels and full
    resolution oneDNN convolves it faster that way.
    """
    if channels_last:
        return torch.channels_last, torch.channels_last
    return torch.contiguous_format, torch.channels_last if device_type == "cpu" else torch.contiguous_format


def set_memory_layout(unet, controlnet, channels_last: bool, device_type: str) -> tuple[torch.memory_format,
                                                                                         torch.memory_format]:
    """Lay out ``unet`` and ``controlnet``'s weights as :func:`memory_layout` says; return its two formats.

    A ControlNet without a conditioning embedding (SD3's and Flux's read the condition's latents) keeps the
    condition in the models' layout."""
    models_layout, conditioning_layout = memory_layout(channels_last, device_type)
    if models_layout != torch.contiguous_format:
        unet.to(memory_format=models_layout)
        controlnet.to(memory_format=models_layout)
    embedding = getattr(controlnet, "controlnet_cond_embedding", None)
    if embedding is None:
        return models_layout, models_layout
    embedding.to(memory_format=conditioning_layout)
    return models_layout, conditioning_layout


def compile_models(backend: str | None, mode: str | None, *models) -> None:
    """Compile each model's forward in place (``nn.Module.compile``): the module keeps its class, its weights
    and its state-dict keys, so accelerate, the checkpoints and ``save_pretrained`` see the same model.

    The first step traces and compiles (the backward too, through AOTAutograd); a new input shape, such as the
    validation pipeline's, compiles once more.
    """
    if backend is None:
        return
    for model in models:
        model.compile(backend=backend, mode=None if mode in (None, "default") else mode)
