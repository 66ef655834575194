"""Beam options shared by LAIT's pipelines: an explicit local runner that never downloads anything."""
from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

logger = logging.getLogger(__name__)

#: runner names that mean "run here"; they all get the in-process FnApiRunner
LOCAL_RUNNERS = {None, "", "directrunner", "direct", "fnapirunner"}


def make_runner(options: PipelineOptions):
    """The runner to use: FnApiRunner for local names, else None (Beam resolves the name itself).

    Beam's DirectRunner first tries PrismRunner, which downloads a binary from the internet;
    LAIT's local runs go straight to FnApiRunner, the engine DirectRunner falls back to, which
    honours ``--direct_num_workers`` and ``--direct_running_mode``.
    """
    name = options.view_as(StandardOptions).runner
    if isinstance(name, str) and name.lower() not in LOCAL_RUNNERS:
        return None
    if name is not None and not isinstance(name, str):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    logger.info("local run on FnApiRunner")
    return fn_runner.FnApiRunner(provision_info=provision)
