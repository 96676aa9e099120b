"""Experiments: presets, configuration and the pipeline that runs one."""

from fimo.experiments.config import Config, load_config, preset_names, with_overrides
from fimo.experiments.pipeline import RunResult, run

__all__ = ["Config", "RunResult", "load_config", "preset_names", "run", "with_overrides"]
