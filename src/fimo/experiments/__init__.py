"""Experiments: presets and configuration, the pipeline that runs one
(:mod:`fimo.experiments.pipeline`) and the run directory it writes
(:mod:`fimo.experiments.rundir`).

The pipeline is not imported here: the run directory, which :func:`fimo.evaluate` reads,
lives in this package, and the pipeline imports :mod:`fimo.evaluate`.
"""

from fimo.experiments.config import Config, load_config, preset_names, with_overrides

__all__ = ["Config", "load_config", "preset_names", "with_overrides"]
