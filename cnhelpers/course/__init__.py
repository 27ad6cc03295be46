"""cnhelpers.course: the course's own machinery, apart from the reusable library at ``cnhelpers``.

What only the course needs lives here: its profiles and recipe, the generated fill data and tiny bases, the
notebooks' figures, widgets and exercise checks, scoring control fidelity, measuring memory, the notebook runner,
the Colab cell, the tiny base's pretraining and the Flax variant. These modules may import the core
(``cnhelpers.*``); the core never imports them (``tests/test_package_layers.py``).

Nothing is imported here, so ``cnhelpers.course.flax_training`` still imports in the Flax environment.
"""
