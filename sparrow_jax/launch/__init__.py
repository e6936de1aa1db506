"""Launching `sparrow train` on Cloud TPU VMs (see launch/README.md).

Modules:
  gcloud   -- TpuSpec and the builders of every `gcloud compute tpus ...` command line
  remote   -- the shell scripts run on the TPU workers (setup, train, logs)
  runner   -- executes command lines, or prints them in --dry-run
  actions  -- create / setup / run / logs / delete / state, built from the above
  preflight -- load and validate a job's config here before any command (run, babysit)
  babysit  -- rerun a job through preemptions, with bounded retries and backoff
  cli      -- the `python launch/tpu.py <action> ...` front end

Nothing here imports JAX or talks to Google Cloud except through the runner; preflight
imports the config module (ml_collections, pure Python).
"""
