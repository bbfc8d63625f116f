"""Wall time and peak memory of one run of each paper stream's full protocol, per agent, projected from measured steps.

For each stream (its registered protocol: tasks, samples, epochs, batch, backbone) and agent, a fresh process makes the
env at the full protocol, runs ``--steps`` steps through ``clenv.run`` after ``--warmup`` untimed ones, and reports
the time per step, the protocol's step count (``env.unwrapped.total_steps``), the projected wall time of the whole
run (time per step x steps; steps are alike, and a task switch costs one extra permutation or label draw) and the
process's peak resident memory (``ru_maxrss``, which includes the dataset). Where a dataset is absent, full-size
random stand-ins are written once under ``--data`` in the real on-disk formats (MNIST idx files, CIFAR pickles; the
same writers the tests use), so the loaders, sizes and memory are the real ones. ImageFolder streams (Tiny-ImageNet,
mini-ImageNet, ImageNet) are skipped unless their trees are present: writing 100,000 images is not worth a timing.

The last line is ``ratio=<projected hours of neumosync / projected hours of base>`` on the first stream, the
slowdown a user plans for.

    python benchmarks/protocol_times.py [--envs RandomLabelFashionMNIST-v0,...] [--agents base,neumosync]
        [--steps 300] [--warmup 50] [--threads 1] [--device cpu] [--data /tmp/clenv-standins]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENVS = ("RandomLabelFashionMNIST-v0", "PermutedFashionMNIST-v0", "ShuffleFashionMNIST-v0",
                "RandomLabelMNIST-v0", "PermutedMNIST-v0", "RandomLabelCIFAR10-v0", "ShuffleCIFAR10-v0",
                "ClassSplitCIFAR100-v0")


def write_standins(env_id: str, data: Path) -> None:
    """Full-size random data in the real formats for the datasets this stream reads, where they are absent."""
    sys.path.insert(0, str(ROOT))
    from tests.disk_formats import write_cifar, write_mnist

    if "CIFAR100" in env_id:
        if not (data / "cifar-100-python" / "train").is_file():
            write_cifar(data, num_classes=100, per_class_train=500, per_class_test=100)
    elif "CIFAR10" in env_id:
        if not (data / "cifar-10-batches-py" / "test_batch").is_file():
            write_cifar(data, num_classes=10, per_class_train=5000, per_class_test=1000)
    elif "MNIST" in env_id and "Fashion" not in env_id:
        if not (data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file():
            write_mnist(data, n_train=60000, n_test=10000)


def measure(env_id: str, agent: str, steps: int, warmup: int, threads: int, device: str, standins: bool) -> dict:
    """One run's measurement, in this process (called in a fresh subprocess by :func:`main`)."""
    import resource
    import time

    import gymnasium as gym
    import torch

    import agents
    import clenv

    torch.set_num_threads(threads)
    if standins:  # torchvision checks the official CIFAR files' MD5 sums, which random stand-ins cannot match
        import torchvision.datasets.cifar as cifar

        cifar.check_integrity = lambda *args, **kwargs: True
    env = gym.make(env_id, device=device)
    total = int(env.unwrapped.total_steps)
    a = agents.make(agent, env)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    class Clock(clenv.Callback):
        def __init__(self):
            self.start = None

        def on_step(self, env, agent, step):
            if step["step"] == warmup:
                sync()
                self.start = time.perf_counter()

    clock = Clock()
    clenv.run(env, a, seed=0, progress=False, total_steps=warmup + steps, callbacks=[clock])
    sync()
    per_step = (time.perf_counter() - clock.start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"env": env_id, "agent": agent, "ms_per_step": 1e3 * per_step, "steps": total,
            "hours": per_step * total / 3600, "peak_mib": peak, "backbone": a.env_spec["backbone"]}


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default=",".join(DEFAULT_ENVS))
    p.add_argument("--agents", default="base,neumosync")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=os.environ.get("CLENV_STANDINS", "/tmp/clenv-standins"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure ENV,AGENT in this process
    a = p.parse_args(argv)
    if a.one:
        env_id, agent = a.one.split(",")
        print(json.dumps(measure(env_id, agent, a.steps, a.warmup, a.threads, a.device, "CLENV_STANDINS_USED" in
                                 os.environ)))
        return 0.0
    data = Path(a.data)
    rows = []
    for env_id in a.envs.split(","):
        import clenv

        d = next(d for d in clenv.ENV_TABLE if d.id == env_id)
        if "ImageFolder" in d.data:
            print(f"{env_id}: skipped (ImageFolder data; put the tree under CLENV_DATA to time it)", flush=True)
            continue
        if "Debian" not in d.data:
            write_standins(env_id, data)
        for agent in a.agents.split(","):
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
            if "Debian" not in d.data:
                env["CLENV_DATA"], env["CLENV_STANDINS_USED"] = str(data), "1"
            out = subprocess.run([sys.executable, __file__, "--one", f"{env_id},{agent}", "--steps", str(a.steps),
                                  "--warmup", str(a.warmup), "--threads", str(a.threads), "--device", a.device],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{env_id} {agent}: failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{env_id} {agent} ({row['backbone']}): {row['ms_per_step']:.2f} ms/step x {row['steps']:,} steps "
                  f"= {row['hours']:.2f} h projected, peak {row['peak_mib']:.0f} MiB", flush=True)
    print()
    print("| stream | agent | backbone | ms / step | steps | projected wall time | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        hours = r["hours"]
        t = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours >= 1 / 60 else f"{hours * 3600:.0f} s"
        print(f"| {r['env']} | {r['agent']} | {r['backbone']} | {r['ms_per_step']:.2f} | {r['steps']:,} | {t} | "
              f"{r['peak_mib']:.0f} MiB |")
    first = [r for r in rows if r["env"] == rows[0]["env"]] if rows else []
    base = next((r for r in first if r["agent"] == "base"), None)
    other = next((r for r in first if r["agent"] != "base"), None)
    ratio = other["hours"] / base["hours"] if base and other else float("nan")
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
