"""The embedded testbed: a whole site on one machine (local Slurm + OpenNebula-compatible cloud).

Nothing outside ``vcluster.testbed`` imports from here: the bridge talks to the testbed only
through Slurm's commands and OpenNebula's XML-RPC API, as it would to a real site.
"""
