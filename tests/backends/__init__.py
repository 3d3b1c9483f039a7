"""The backends on real engines: Docker, Swarm, EC2 (moto), Slurm, GPU inventory."""
