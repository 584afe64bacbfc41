"""What every tab of the page shares: the settings, the loaded models, the output folders and the
request log. Built once per app (no module-level state), passed to each tab's builder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from nextscale.sampling import SamplingConfig
from nextscale.sampling.cli import SampleArgs
from nextscale.sampling.pipeline import recommended_sampling
from nextscale.ui.config import UIConfig
from nextscale.ui.models import ModelError, ModelRegistry
from nextscale.ui.outputs import OutputStore
from nextscale.ui.requestlog import RequestLog, RequestRecord
from nextscale.ui.uploads import UploadError

USER_ERRORS = (ValueError, ModelError, UploadError)
"""Errors that are the request's fault: their message is shown as it is."""


def escape_markdown(text: str) -> str:
    """Text shown as it is inside a Markdown component (paths keep their underscores, '*' stays '*')."""
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~])", r"\\\1", text)


@dataclass
class Services:
    config: UIConfig
    registry: ModelRegistry
    store: OutputStore = field(default_factory=OutputStore)
    log: RequestLog = field(default_factory=RequestLog)

    @cached_property
    def sampling_defaults(self) -> SamplingConfig:
        """The sampling controls' initial values: the first model's recommended settings (pipeline.json),
        else the defaults, exactly as `sample.py` chooses them when its options are left out."""
        try:
            recommended = recommended_sampling(self.config.checkpoint)
        except ValueError:  # a damaged pipeline.json: loading the model reports it
            recommended = None
        return SampleArgs().sampling_config(recommended)

    @staticmethod
    def registry_for(config: UIConfig) -> ModelRegistry:
        return ModelRegistry(config.device, config.dtype, config.concurrency, config.max_loaded_models)

    def report_error(self, record: RequestRecord, error: Exception) -> str:
        """Log the error and return the page's message: the request's own fault is explained, anything
        else is logged with its traceback and summarised in one line (the page never shows a traceback)."""
        if isinstance(error, USER_ERRORS):
            self.log.refused(record, error)
            return f"error: {escape_markdown(str(error))}"
        self.log.failed(record, error)
        return (f"error: the server could not complete request {record.number} ({type(error).__name__}); "
                "the server log has the details")
