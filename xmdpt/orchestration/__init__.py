"""Running the DAG: the checks every stage starts with (:mod:`xmdpt.orchestration.preflight`) and
stages as Ray jobs on a cluster (:mod:`xmdpt.orchestration.cluster`, with the job's environment in
:mod:`~xmdpt.orchestration.job_env` and its outputs in :mod:`~xmdpt.orchestration.job_outputs`).
"""
