"""The job layer: a list of micrographs and an output folder in, files a user keeps out. ``pick``,
``train`` and ``evaluate`` (the jobs behind the CLI and the RELION External jobs), ``parallel``
(several worker processes on one node), ``merge`` (the shards of a pick job), ``report`` and
``figures`` (the visual report), ``cryosparc_import`` (picks into a running CryoSPARC)."""
