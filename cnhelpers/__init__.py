"""cnhelpers: the tested companion package of the ControlNet training course.

One module per concern: ``profiles`` (tiny, sd15, sdxl), ``data`` (fill data, loaders, transforms),
``models`` (the tiny base, ControlNet initialisation), ``sdxl`` (the SDXL variant), ``training`` (the loop),
``cli`` (train_controlnet.py's flags), ``memory`` (memory tricks and the ladder), ``inference``,
``metrics`` (control fidelity), ``plots``, ``checks`` (exercise self-checks), ``hub`` (hub ids and offline
errors), ``env`` (the environment report), ``course`` (the notebook runner). ``flax_training`` needs the
Flax environment (``make setup-flax``) and is imported by nothing else.
"""

__version__ = "0.1.0"
