"""Pipelines: one file from `load_dataset` to a saved or pushed subset, each step cached by fingerprint.

A pipeline file (YAML or JSON) lists steps — ``load``, ``corrupt``, ``tokenize``, ``embed``, ``score``,
``select``, ``save``, ``push`` — each naming a function or class of the Python API with its options
(`hf_prune.pipeline.components` reads them from the signatures). ``hf-prune run FILE`` validates the
whole file first (unknown steps, components, options and missing columns are reported with their line
and the valid choices), then runs it from the last cached step.

Example:
    >>> from hf_prune.pipeline import read_pipeline, run_pipeline
    >>> result = run_pipeline(read_pipeline("recipes/pipelines/image_classification.yaml"), offline_models=True)
    >>> len(result.dataset)
    200
"""

from .components import Component, Option, components
from .runner import PipelineResult, default_cache_dir, format_plan, plan, run_pipeline, validate
from .spec import PipelineError, PipelineSpec, StepSpec, apply_overrides, parse_pipeline, read_pipeline
from .steps import STEP_KINDS, load_source

__all__ = [
    "Component", "Option", "components", "PipelineResult", "default_cache_dir", "format_plan", "plan", "run_pipeline",
    "validate", "PipelineError", "apply_overrides", "PipelineSpec", "StepSpec", "parse_pipeline", "read_pipeline", "STEP_KINDS",
    "load_source",
]
