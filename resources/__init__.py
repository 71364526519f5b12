"""Data shipped with radreview: model packages (``models/<id>/``) and window/level presets.

Found with :func:`importlib.resources.files` so that an installed wheel and a source checkout
behave the same; nothing under this folder is written at run time (user-writable things go to
the user data folder, see :mod:`radreview.studies.userdirs`).
"""
