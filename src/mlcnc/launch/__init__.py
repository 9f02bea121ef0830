"""Running beyond one process: SLURM jobs (``slurm``) and the benchmark's fan-out (``fanout``)."""
