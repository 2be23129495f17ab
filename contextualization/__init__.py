"""Files that run inside vcluster's worker VMs, shipped as package data.

``vcluster-join.sh`` is the guest script: vcluster sends it base64 in the VM's CONTEXT
(``START_SCRIPT_BASE64``) and OpenNebula's guest agent runs it after the network is up.
"""
