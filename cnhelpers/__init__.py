"""cnhelpers: the tested companion package of the ControlNet training course.

One module per concern: ``profiles`` (tiny vs sd15), ``data`` (fill data and loaders), ``models``
(the tiny base), ``hub`` (hub ids and offline errors), ``env`` (the environment report), ``plots``.
"""

__version__ = "0.1.0"
