"""vcluster: run Slurm batch jobs on VMs booted for them in OpenNebula."""

__version__ = "0.1.0"
