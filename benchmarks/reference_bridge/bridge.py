"""A minimal Slurm <-> OpenNebula bridge, as sites wrote them around 2011: the reference that
benchmarks/compare.py measures vcluster against.

slurmctld runs it as ResumeProgram (``bridge.py resume HOSTLIST``) and SuspendProgram
(``bridge.py suspend HOSTLIST``); prolog.sh and epilog.sh are its PrologSlurmctld and
EpilogSlurmctld. It keeps no state and runs no daemon:

- resume: for each node, one after another, ``one.template.instantiate`` of the worker
  template with the node's tag (``REFBRIDGE_NODE``, ``REFBRIDGE_CLUSTER``) and a CONTEXT the
  worker image's join script reads (node name, slurmctld address, and the munge key itself in
  ``MUNGE_KEY_BASE64``, readable by anyone who can read the VM: the flaw vcluster's one-time
  join tokens remove); then waits for the VM's IP and sets the node's NodeAddr to it.
- suspend: terminates (hard) every VM tagged with one of the nodes.

Settings come from the JSON file named by ``REFBRIDGE_CONFIG``: ``xmlrpc``, ``auth_file``
(``user:password``), ``template`` (name), ``munge_key_file``, ``slurmctld`` (host:port),
``cluster``, ``scontrol``, ``join_script`` and ``log``. Every call is logged with its Unix
time to the millisecond (the benchmark reads the terminate times from this log).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

import pyone

IP_WAIT_S = 60.0


def log(cfg: dict[str, Any], message: str) -> None:
    with open(cfg["log"], "a", encoding="utf-8") as out:
        out.write(f"{time.time():.3f} {os.getpid()} {message}\n")


def hostnames(cfg: dict[str, Any], hostlist: str) -> list[str]:
    out = subprocess.run([cfg["scontrol"], "show", "hostnames", hostlist], capture_output=True,
                         text=True, check=True, timeout=30)
    return out.stdout.split()


def quoted(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


def extra_template(cfg: dict[str, Any], node: str) -> str:
    with open(cfg["munge_key_file"], "rb") as f:
        key = base64.b64encode(f.read()).decode()
    with open(cfg["join_script"], "rb") as f:
        script = base64.b64encode(f.read()).decode()
    context = {"SET_HOSTNAME": node, "NETWORK": "YES", "VCLUSTER_NODE": node,
               "SLURM_CONF_SERVER": cfg["slurmctld"], "MUNGE_KEY_BASE64": key,
               "START_SCRIPT_BASE64": script}
    body = ",\n".join(f"  {k} = {quoted(v)}" for k, v in context.items())
    return (f"REFBRIDGE_NODE = {quoted(node)}\nREFBRIDGE_CLUSTER = {quoted(cfg['cluster'])}\n"
            f"CONTEXT = [\n{body} ]\n")


def first_ip(vm: Any) -> str:
    nics = vm.TEMPLATE.get("NIC") or []
    for nic in nics if isinstance(nics, list) else [nics]:
        if nic.get("IP"):
            return str(nic["IP"])
    return ""


def resume(cfg: dict[str, Any], one: Any, nodes: list[str]) -> int:
    pool = one.templatepool.info(-2, -1, -1)
    ids = [t.ID for t in pool.VMTEMPLATE or [] if t.NAME == cfg["template"]]
    if not ids:
        log(cfg, f"ERROR: no template named {cfg['template']}")
        return 1
    failed = 0
    for node in nodes:  # sequential, as the reference is
        try:
            vm_id = one.template.instantiate(ids[0], node, False, extra_template(cfg, node),
                                             False)
            log(cfg, f"allocated node {node} vm {vm_id}")
            deadline, ip = time.monotonic() + IP_WAIT_S, ""
            while not ip and time.monotonic() < deadline:
                ip = first_ip(one.vm.info(vm_id))
                if not ip:
                    time.sleep(0.2)
            if not ip:
                raise RuntimeError(f"VM {vm_id} has no IP after {IP_WAIT_S:g} s")
            subprocess.run([cfg["scontrol"], "update", f"nodename={node}", f"nodeaddr={ip}",
                            f"nodehostname={node}"], check=True, timeout=30)
            log(cfg, f"nodeaddr node {node} ip {ip}")
        except Exception as exc:  # one node's failure must not stop the others' boots
            log(cfg, f"ERROR: node {node}: {exc}")
            failed += 1
    return 1 if failed else 0


def suspend(cfg: dict[str, Any], one: Any, nodes: list[str]) -> int:
    wanted = set(nodes)
    pool = one.vmpool.infoextended(-2, -1, -1, -1)  # .info leaves USER_TEMPLATE out
    for vm in pool.VM or []:
        tmpl = vm.USER_TEMPLATE or {}
        node = tmpl.get("REFBRIDGE_NODE")
        if node in wanted and tmpl.get("REFBRIDGE_CLUSTER") == cfg["cluster"]:
            one.vm.action("terminate-hard", vm.ID)
            log(cfg, f"terminated node {node} vm {vm.ID}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("resume", "suspend"):
        print("usage: bridge.py resume|suspend HOSTLIST", file=sys.stderr)
        return 2
    with open(os.environ["REFBRIDGE_CONFIG"], encoding="utf-8") as f:
        cfg = json.load(f)
    with open(cfg["auth_file"], encoding="utf-8") as f:
        session = f.read().strip()
    one = pyone.OneServer(cfg["xmlrpc"], session=session)
    nodes = hostnames(cfg, argv[2])
    log(cfg, f"{argv[1]} {' '.join(nodes)}")
    return (resume if argv[1] == "resume" else suspend)(cfg, one, nodes)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
