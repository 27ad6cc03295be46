"""cnhelpers: the tested companion package of the ControlNet training course.

A reusable library (the modules here and ``families/``) and, apart from it, the course's own machinery
(``course/``), which imports the library and is never imported by it. One job per module, in layers that import
only downward (``tests/test_package_layers.py`` checks both; README.md's table gives each module's job):

0. ``paths`` (the build folder), ``env`` (the environment report), ``messages`` (one-line errors), ``hub`` (hub ids,
   offline errors), ``tokenizer`` (the tiny bases' CLIP BPE tokenizer); ``course`` (the subpackage),
   ``course.profiles`` (tiny, sd15, sdxl: plain data), ``course.hub_server`` (the loopback Hub);
1. ``data`` (loaders, checks, transforms, batches), ``own_data`` (your pictures, their conditions), ``images``
   (PIL grids), ``losses`` (target, Min-SNR, loss, ``predict_noise``), ``model_info`` (parameter counts,
   downsampling), ``families`` (which family a base is; ``families.family``, ``families.sd``, ``families.sdxl``:
   what each knows); ``course.fill`` (the generated fill data), ``course.held_out`` (held-out outlines),
   ``course.metrics`` (scoring pixels), ``course.tiny_bases`` (the tiny base, SD 1.5's architecture),
   ``course.tiny_sdxl`` (the tiny SDXL base), ``course.widgets`` (widgets with a static form),
   ``course.own_walkthrough`` (notebook 09's pictures and commands);
2. ``speed`` (channels-last, torch.compile), ``config`` (train_controlnet.py's flags), ``optim``, ``cache``,
   ``checkpoints``, ``consistency`` (ControlNet++'s controllability), ``outputs`` (validation, final save, model
   card, log), ``loading`` (models to train);
   ``course.recipes`` (the course's flags, once);
3. ``training`` (the loop, as named steps), ``inference`` (pipelines, generation);
4. ``course.controlnet`` (notebook 03's ControlNet, trained briefly when missing), ``course.evaluation`` (control
   fidelity, checkpoint IoU), ``course.anatomy`` (notebook 02), ``course.memory`` (measuring, the ladder);
5. ``train`` (``python -m cnhelpers.train``), ``make_dataset`` (``python -m cnhelpers.make_dataset``);
   ``course.plots``, ``course.checks`` (exercise self-checks), ``course.runner`` (the notebook runner),
   ``course.colab`` (the notebooks' Colab cell), ``course.pretrain_base`` (the tiny base's recipe),
   ``course.flax_training`` (the Flax environment only).
"""

import logging

__version__ = "0.1.0"

# bitsandbytes looks for an optional CPU kernel package when it is imported (diffusers imports it) and warns on
# stderr that it is missing: a pink box in every notebook, about a kernel the course never uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
