"""The application on top of the library: the ``captum-iba`` commands.

Registries of datasets and model sources, the run plan, the attribution store,
the distributed runner, the evaluation (computes) and the report (renders), the
command line. The library (``captum_iba.attr``, ``metrics``, ``maps``, ...) never
imports this package.
"""
