"""Benchmark: 1,000 ``one.template.instantiate`` calls through vcluster's OneClient from 1, 4
and 8 threads, against the testbed cloud.

Why: the controller's boots now go out ``controller.boot_concurrency`` at once, each worker
with its own :class:`vcluster.one.OneClient` (pyone over XML-RPC, a new connection per call);
burst_parallel.py measures the pass with a simulated round trip, this measures what the
real client and an XML-RPC server make of it. Runs ``vcluster testbed cloud serve --driver
dummy`` as a separate process (a threaded XML-RPC server, like oned's), allocates one VM
template, then for each thread count instantiates N VMs with the extra template vcluster
sends (the guest script, tags, context: the real ``worker_vm_extra``), and reports the wall
time, calls per second, each call's latency (p50, p95) and the ratio to one thread measured
in the same run. Between runs every VM is waited RUNNING, terminated and waited DONE, so
each run starts on a quiet server. Both processes share this machine's cores: a remote oned
would not take the client's CPU, so these are lower bounds of what concurrency gains.

    python3 benchmarks/cloud_parallel.py [--vms 1000] [--threads 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyone

from vcluster.config import parse_config
from vcluster.one import OneClient
from vcluster.vmtemplate import GuestContext, worker_vm_extra

AUTH = "oneadmin:opennebula"
TEMPLATE = ('NAME = "bench-worker"\nCPU = "0.1"\nVCPU = "1"\nMEMORY = "64"\n'
            'NIC = [ NETWORK = "vcluster" ]\nCONTEXT = [ NETWORK = "YES" ]\n')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_all(one: pyone.OneServer, states: set[tuple[int, int]], count: int,
             timeout_s: float) -> float:
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < timeout_s:
        pool = one.vmpool.info(-2, -1, -1, -2)
        done = sum(1 for vm in (pool.VM or []) if (vm.STATE, vm.LCM_STATE) in states)
        if done >= count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"only {done} of {count} VMs reached {states}")


def start_cloud(state_dir: str, template: str = TEMPLATE) -> tuple[subprocess.Popen[str], str]:
    """The testbed cloud serving (dummy VMs, room for 1,000 VMs of 2 CPUs and 2 GB), with
    ``template`` allocated; (its process, its XML-RPC URL)."""
    port, gate_port = free_port(), free_port()
    argv = [sys.executable, "-c", "from vcluster.cli import main; main()", "testbed",
            "cloud", "serve", "--port", str(port), "--onegate-port", str(gate_port),
            "--driver", "dummy", "--state-dir", state_dir, "--hosts", "4",
            "--host-cpu", "100000", "--host-mem", str(1024 * 1024 * 1024),
            "--subnet", "10.250.0.0/20", "--lease-start", "16", "--auth", AUTH]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    server.stdout.readline()  # "testbed cloud: XML-RPC ...": it is serving
    xmlrpc = f"http://127.0.0.1:{port}/RPC2"
    pyone.OneServer(xmlrpc, session=AUTH).template.allocate(template)
    return server, xmlrpc


def instantiate_all(clients: list[OneClient], template_id: int, n: int, extra: str,
                    run: int) -> tuple[float, list[float], list[int]]:
    """N instantiates shared out to one thread per client; (wall s, latencies, VM ids)."""
    lock = threading.Lock()
    todo = iter(range(n))
    latencies: list[float] = []
    ids: list[int] = []

    def work(client: OneClient) -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            t0 = time.monotonic()
            vm_id = client.instantiate(template_id, f"bench-r{run}-{i:04d}", extra)
            took = time.monotonic() - t0
            with lock:
                latencies.append(took)
                ids.append(vm_id)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, latencies, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--threads", default="1,4,8")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "cloud_parallel.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="cloud-parallel-") as tmp:
        config = parse_config({
            "opennebula": {"retry_delays_s": []},
            "controller": {"cluster_name": "bench", "state_dir": f"{tmp}/ctl"},
            "node_class": [{"name": "small", "count": 10, "cpus": 1, "memory_mb": 512,
                            "template": "bench-worker"}]})
        extra = worker_vm_extra(
            node_class=config.node_classes[0], node_name="vc-small-001", job_id=1000,
            cluster="bench", cpus=1, memory_mb=512,
            context=GuestContext(slurm_conf_server="10.0.0.1:6817",
                                 join_url="http://10.0.0.1:6830"),
            join_token="t" * 43)
        server, xmlrpc = start_cloud(f"{tmp}/cloud")
        try:
            admin = pyone.OneServer(xmlrpc, session=AUTH)
            template_id = int(admin.templatepool.info(-2, -1, -1).VMTEMPLATE[0].ID)
            reference = None
            for run, count in enumerate(int(x) for x in args.threads.split(",")):
                settings = replace(config.opennebula, xmlrpc=xmlrpc)
                clients = [OneClient(settings, session=AUTH) for _ in range(count)]
                cpu0 = time.process_time()
                wall, latencies, ids = instantiate_all(clients, template_id, args.vms,
                                                       extra, run)
                cpu = time.process_time() - cpu0
                reference = wall if reference is None else reference
                qs = statistics.quantiles(latencies, n=20)
                result = {"threads": count, "vms": len(ids), "wall_s": round(wall, 3),
                          "calls_per_s": round(len(ids) / wall, 1),
                          "call_p50_ms": round(1000 * statistics.median(latencies), 1),
                          "call_p95_ms": round(1000 * qs[18], 1),
                          "client_cpu_s": round(cpu, 3),
                          "speedup_vs_first": round(reference / wall, 2)}
                print(json.dumps(result), flush=True)
                runs.append(result)
                wait_all(admin, {(3, 3)}, len(ids), timeout_s=300)
                for vm_id in ids:
                    admin.vm.action("terminate-hard", vm_id)
                wait_all(admin, {(6, 0)}, len(ids) * (run + 1), timeout_s=300)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    out = {"benchmark": "cloud_parallel", "driver": "dummy",
           "client": "vcluster OneClient (pyone 6.10.5, a new TCP connection per call), one "
                     "per thread",
           "extra_template_bytes": len(extra.encode()), "runs": runs,
           "server_exit_code": server.returncode, "python": platform.python_version(),
           "cpus": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2),
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
