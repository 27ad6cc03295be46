"""cnhelpers: the tested companion package of the ControlNet training course.

One job per module, in layers that import only downward (``tests/test_package_layers.py`` checks it):

0. ``paths`` (the build folder), ``env`` (the environment report), ``hub`` (hub ids, offline errors),
   ``profiles`` (tiny, sd15, sdxl: plain data), ``tokenizer`` (the tiny bases' CLIP BPE tokenizer);
1. ``data`` (fill data, loaders, transforms), ``images`` (PIL grids), ``losses`` (target, Min-SNR, loss,
   ``predict_noise``), ``metrics`` (scoring pixels), ``base_models`` (the tiny base, SD 1.5's architecture),
   ``sdxl`` (the SDXL variant), ``widgets`` (widgets shown with a static form for kernel-less viewers);
2. ``config`` (train_controlnet.py's flags), ``recipes`` (the course's flags, once), ``optim``, ``cache``,
   ``checkpoints``, ``outputs`` (validation, final save, model card, log), ``loading`` (models to train);
3. ``training`` (the loop, as named steps), ``inference`` (pipelines, generation);
4. ``evaluation`` (control fidelity, checkpoint IoU), ``anatomy`` (notebook 02), ``memory`` (measuring, the ladder);
5. ``plots``, ``checks`` (exercise self-checks), ``train`` (``python -m cnhelpers.train``), ``course`` (the
   notebook runner), ``colab`` (the notebooks' Colab cell), ``pretrain_base`` (the tiny base's recipe), ``flax_training`` (the Flax environment only).
"""

import logging

__version__ = "0.1.0"

# bitsandbytes looks for an optional CPU kernel package when it is imported (diffusers imports it) and warns on
# stderr that it is missing: a pink box in every notebook, about a kernel the course never uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
