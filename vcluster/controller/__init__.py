"""The controller: observe Slurm, OpenNebula and the database; plan; act.

``observe`` reads the whole picture (or nothing), ``plan`` is a pure function from that
picture to a list of actions, ``act`` carries each action out in isolation, and ``loop``
runs passes when woken by a hook and every ``controller.interval_s`` seconds.
"""
