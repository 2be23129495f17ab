"""CPU a program costs before its main when its parent holds many threads (slurmscriptd's case).

Why: in the 1,000-job burst (burst.py) each program slurmctld runs used about 20 ms of CPU
before its ``main`` began (the hook front measures it at its start), against about 1 ms with
few jobs. slurmscriptd, which forks every program slurmctld runs, keeps a thread per script
it is running (2,551 threads and 5,246 memory mappings were counted in it while the burst's
prologs waited for their nodes); a forked child inherits the parent's mappings and page
tables and pays for tearing them down at its exec. This measures that alone: a C parent
with N idle threads (each has touched its stack) forks and execs ``/bin/true`` REPEAT times,
and the child's CPU (user + system, from wait4) is averaged. The reference, in the same run,
is the same parent with no thread: ratios are against it.

    python3 benchmarks/fork_threads.py [--threads 0,250,500,1000,2500] [--repeat 50]

JSON in benchmarks/results/fork_threads.json. Needs a C compiler (cc or gcc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

static void *idle(void *arg) {
    volatile char stack[8192];
    stack[0] = 1;
    stack[8191] = 1;
    (void)arg;
    pause();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int threads = atoi(argv[1]), repeat = atoi(argv[2]);
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle, NULL) != 0) {
            fprintf(stderr, "pthread_create failed at %d\n", i);
            return 1;
        }
    }
    sleep(1);
    double total_ms = 0.0;
    for (int i = 0; i < repeat; i++) {
        struct rusage ru;
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        if (pid < 0 || wait4(pid, NULL, 0, &ru) != pid)
            return 1;
        total_ms += (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
    }
    printf("%.4f\n", total_ms / repeat);
    return 0;
}
"""


def build(directory: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("fork_threads: no C compiler (cc or gcc) on PATH")
    source, binary = directory / "fork_threads.c", directory / "fork_threads"
    source.write_text(PROGRAM)
    subprocess.run([cc, "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def child_cpu_ms(binary: Path, threads: int, repeat: int) -> float:
    out = subprocess.run([str(binary), str(threads), str(repeat)], capture_output=True,
                         text=True, check=True, timeout=600)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="0,250,500,1000,2500",
                        help="comma-separated thread counts of the parent (0 is the reference)")
    parser.add_argument("--repeat", type=int, default=50, help="forks per thread count")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "fork_threads.json"))
    args = parser.parse_args()
    counts = sorted({0, *(int(n) for n in args.threads.split(",") if n.strip())})
    with tempfile.TemporaryDirectory(prefix="vcfork-") as tmp:
        binary = build(Path(tmp))
        rows = [{"parent_threads": n, "child_cpu_ms": round(child_cpu_ms(binary, n,
                                                                          args.repeat), 3)}
                for n in counts]
    reference = rows[0]["child_cpu_ms"] or 1e-9
    for row in rows:
        row["ratio_vs_no_threads"] = round(row["child_cpu_ms"] / reference, 2)
    result = {
        "benchmark": "fork_threads",
        "what": "CPU of a child forked by a parent with N idle threads, until /bin/true ends",
        "repeat": args.repeat,
        "rows": rows,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
