"""Benchmark: allocate, boot and terminate 1,000 dummy VMs on the testbed cloud.

Runs ``vcluster testbed cloud serve --driver dummy`` as a separate process (default step
timings, the oned-like placement window), drives it with the real pyone client, and writes
calls per second, how long the fleet took to boot and to die, pool listing latency and the
server's peak RSS (VmHWM) to ``benchmarks/results/cloud_scale.json``.

    python3 benchmarks/cloud_scale.py [--vms 1000] [--out benchmarks/results/cloud_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyone

AUTH = "oneadmin:opennebula"
VM_TEXT = 'CPU = "0.1"\nMEMORY = "64"\nNIC = [ NETWORK = "vcluster" ]\n' \
          'CONTEXT = [ NETWORK = "YES", TOKEN = "YES" ]\nVCLUSTER_CLUSTER = "bench"\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def wait_all(one: pyone.OneServer, state: int, lcm: int, count: int, timeout_s: float
             ) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        pool = one.vmpool.info(-2, -1, -1, -2)
        done = sum(1 for vm in (pool.VM or []) if (vm.STATE, vm.LCM_STATE) == (state, lcm))
        if done >= count:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"only {done} of {count} VMs reached {(state, lcm)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "cloud_scale.json")
    args = parser.parse_args()
    port, gate_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as state_dir:
        argv = [sys.executable, "-c", "from vcluster.cli import main; main()", "testbed",
                "cloud", "serve", "--port", str(port), "--onegate-port", str(gate_port),
                "--driver", "dummy", "--state-dir", state_dir, "--hosts", "4",
                "--host-cpu", "4000", "--host-mem", str(64 * 1024 * 1024),
                # a /20: room for 1,000 leases (the dummy driver creates no interfaces)
                "--subnet", "10.250.0.0/20", "--lease-start", "16"]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            server.stdout.readline()  # the "testbed cloud: XML-RPC ..." line: it is serving
            one = pyone.OneServer(f"http://127.0.0.1:{port}/RPC2", session=AUTH)
            started = time.monotonic()
            ids = [one.vm.allocate(VM_TEXT) for _ in range(args.vms)]
            allocate_s = time.monotonic() - started
            boot_s = wait_all(one, 3, 3, args.vms, timeout_s=600)
            t0 = time.monotonic()
            one.vmpool.info(-2, -1, -1, -1)
            pool_short_s = time.monotonic() - t0
            t0 = time.monotonic()
            one.vmpool.infoextended(-2, -1, -1, -1)
            pool_full_s = time.monotonic() - t0
            t0 = time.monotonic()
            for vm_id in ids:
                one.vm.info(vm_id)
            info_s = time.monotonic() - t0
            t0 = time.monotonic()
            for vm_id in ids:
                one.vm.action("terminate", vm_id)
            terminate_s = time.monotonic() - t0
            done_s = wait_all(one, 6, 0, args.vms, timeout_s=600)
            rss_mb = peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    result = {
        "benchmark": "cloud_scale", "vms": args.vms, "driver": "dummy",
        "client": f"pyone {pyone.__dict__.get('__version__', '6.10.5')} (new TCP connection "
                  "per call)",
        "allocate_calls_per_s": round(args.vms / allocate_s, 1),
        "vm_info_calls_per_s": round(args.vms / info_s, 1),
        "terminate_calls_per_s": round(args.vms / terminate_s, 1),
        "all_running_after_allocate_s": round(boot_s, 2),
        "all_done_after_terminate_s": round(done_s, 2),
        "vmpool_info_s": round(pool_short_s, 3),
        "vmpool_infoextended_s": round(pool_full_s, 3),
        "server_peak_rss_mb": round(rss_mb, 1),
        "server_exit_code": server.returncode,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
