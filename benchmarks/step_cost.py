"""Wall time and peak memory of one training step: the base method alone vs GeSSL or DSA.

The suites of settings:

- ``--suite gessl``: per backbone, the base method alone (``--meta none``) and GeSSL with each
  engine, K inner steps, λ look-ahead steps, first or second order (``GESSL_SETTINGS``);
- ``--suite variants``: per backbone, SimCLR alone and GeSSL at its defaults (second order, every
  parameter adapted), with ``--first-order``, with ``--inner-params head`` and with both
  (``VARIANTS``);
- ``--suite dsa``: per batch size, SimCLR alone and SimCLR + DSA (``--reg dsa``, no GeSSL) with the
  default EMA prior and with the ``pixels`` prior;
- ``--suite bases``: training throughput (images/s) and peak memory of every base method that
  trains on batches (``SSL_BASES``: not the episodic ProtoNet and MAML), plain, + DSA and + GeSSL
  with their default settings, per backbone and batch size;
- ``--suite meta``: the unsupervised meta-learners (UMTRA, PsCo, CACTUs) and the episodic references
  (ProtoNet, MAML) at their defaults against SimCLR (``META_BASES``); an episodic method's step is
  one training episode (``--episode-*``: 200 images by default) instead of ``--batch-sizes`` images,
  and CACTUs' one-off clustering before training is not in its step.

Each setting is measured in its own fresh subprocess, so that peak memory is that setting's alone:

- time: median over ``--steps`` timed steps (after ``--warmup`` untimed ones) of
  ``model.prepare_batch`` + ``objective.compute_gradients`` + ``optimizer.step`` on a fixed batch
  of images and two views, in wall seconds and in the process's CPU seconds (``time.process_time``;
  with one thread, ``OMP_NUM_THREADS=1``, the CPU seconds hardly move when other processes load a
  shared machine, and their ratios are the ones to read there);
- arithmetic: the floating-point operations of one more step, counted by torch's
  ``FlopCounterMode`` (matrix products and convolutions, forward and every backward, the inner
  loop's included), and the rate the timed step reaches (GFLOP/s), to set against the device's peak;
- memory: on CPU, the process's peak resident set size (``ru_maxrss``) minus its resident size just
  before the first step, i.e. the step's working memory (activations, graphs of the inner loop,
  gradients); on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before the step.

Settings run interleaved, ``--rounds`` times each, and the medians over rounds are reported, so slow
drift of a shared machine hits every setting alike and one disturbed round does not count (use 3);
ratios are against the plain step of the same base method, backbone and batch size from the same run.

Usage (commands in ``benchmarks/README.md``, results in ``docs/results.md``)::

    python benchmarks/step_cost.py --suite gessl --backbones conv4 --batch-sizes 64
    python benchmarks/step_cost.py --suite variants --backbones conv4 resnet18 --batch-sizes 128
    python benchmarks/step_cost.py --suite dsa --batch-sizes 64 256 512
    python benchmarks/step_cost.py --suite bases --backbones conv4 resnet18
    python benchmarks/step_cost.py --suite meta --batch-sizes 128

``--device cuda`` for a GPU. Writes ``--out`` (JSON, one record per setting) and prints a Markdown
table.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gessl import BASE_METHODS, GeSSL, PlainStep, build_model, resolve_config
from tasks.common.io import atomic_write_text

SSL_BASES = ["simclr", "moco", "byol", "simsiam", "barlow", "vicreg", "swav", "music", "supervised"]
META_BASES = ["simclr", "umtra", "psco", "cactus", "protonet", "maml"]  # suite meta: SimCLR first, the reference
GESSL_SETTINGS = [  # (K inner steps, λ look-ahead steps, first order)
    (1, 1, False), (2, 1, False), (4, 1, False), (1, 2, False), (1, 1, True), (4, 1, True)]
VARIANTS = [  # suite variants: GeSSL's cheaper options, (--inner-params, --first-order)
    ("all", False), ("all", True), ("head", False), ("head", True)]


def settings(suite, backbones, batch_sizes, engines, bases=SSL_BASES):
    """Every setting of ``suite`` to measure, as the gessl.train options that select it."""
    for backbone in backbones:
        for batch_size in batch_sizes:
            common = {"backbone": backbone, "batch_size": batch_size, "meta": "none"}
            if suite == "meta":
                yield from ({**common, "base": base} for base in META_BASES)
                continue
            if suite == "bases":
                for base in bases:
                    yield from ({**common, "base": base}, {**common, "base": base, "reg": "dsa"},
                                {**common, "base": base, "meta": "gessl"})
                continue
            yield common
            if suite == "variants":
                yield from ({**common, "meta": "gessl", "inner_params": params, "first_order": first}
                            for params, first in VARIANTS)
                continue
            if suite == "dsa":
                yield {**common, "reg": "dsa"}
                yield {**common, "reg": "dsa", "dsa_prior": "pixels"}
                continue
            for engine in engines:
                for k, lam, first in GESSL_SETTINGS:
                    yield {**common, "meta": "gessl", "inner_backend": engine, "inner_steps": k,
                           "lookahead": lam, "first_order": first}


def measure(setting, steps, warmup, device):
    """Seconds per step and extra peak memory (MiB) of ``setting``, in this process."""
    cfg = resolve_config({**setting, "device": device})
    dev = torch.device(device)
    model = build_model(cfg, in_channels=1, num_classes=10).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    objective = {"none": PlainStep, "gessl": GeSSL}[cfg.meta].from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    if getattr(BASE_METHODS[cfg.base], "episodic", False):  # one training episode, in its layout
        batch_size = cfg.episode_size
        labels = torch.arange(cfg.episode_ways).repeat(cfg.episode_shots + cfg.episode_queries)
        few = slice(0, 2 * cfg.episode_ways)  # its first two rounds: a support and a query of each class
    else:
        batch_size, labels = cfg.batch_size, torch.randint(10, (cfg.batch_size,), generator=gen)
        few = slice(0, 4)
    images = [torch.rand(batch_size, 1, cfg.image_size, cfg.image_size, generator=gen).to(dev) for _ in range(3)]
    batch = {"images": images[0], "views": images[1:], "labels": labels.to(dev)}
    first = {"images": images[0][few], "views": [v[few] for v in images[1:]], "labels": labels[few].to(dev)}

    def step():
        optimizer.zero_grad(set_to_none=True)
        objective.compute_gradients(model, model.prepare_batch(batch))
        optimizer.step()
        model.after_step(0.5)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # One plain step on a few images first: the libraries' one-time allocations and Adam's state
    # are then in place before the baseline, so the peak counts the step's working memory only.
    PlainStep().compute_gradients(model, first)
    optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss_bytes()
    times, cpu_times = [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
    with FlopCounterMode(display=False) as counter:  # after the peak: counting adds its own memory
        step()
    seconds = statistics.median(times)
    return {"seconds": seconds, "cpu_seconds": statistics.median(cpu_times), "images": batch_size, "peak_mib": (peak - before) / 2**20,
            "gflop": counter.get_total_flops() / 1e9,
            "gflop_per_s": counter.get_total_flops() / 1e9 / seconds}


def matmul_gflops(device, n=4096, repeats=5, tries=3):
    """GFLOP/s of an n × n matrix product on ``device`` in the dtype its training step computes in
    (``--amp auto``: bf16 on a GPU that supports it, else fp32), the best of ``tries`` timings of
    ``repeats`` products: the practical peak a step is set against."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    a, b = (torch.rand(n, n, device=dev).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(tries):
        if cuda:
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if cuda:
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * repeats / best / 1e9, str(dtype).removeprefix("torch.")


def _rss_bytes():
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_isolated(setting, args):
    """``measure`` in a fresh interpreter, so peak memory is this setting's alone."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import step_cost; print(json.dumps(step_cost.measure({setting!r}, {args.steps}, {args.warmup}, "
            f"{args.device!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def label(setting):
    if "base" in setting:  # suite bases: the default settings of each variant
        return setting["base"] + {"none": "", "dsa": " + DSA"}[setting.get("reg", "none")] + (
            " + GeSSL" if setting["meta"] == "gessl" else "")
    if setting["meta"] == "none":
        if setting.get("reg") == "dsa":
            return f"SimCLR + DSA ({setting.get('dsa_prior', 'ema')} prior)"
        return "base (SimCLR)"
    order = "1st" if setting["first_order"] else "2nd"
    if "inner_params" in setting:  # suite variants: the defaults but for these two options
        return f"GeSSL {setting['inner_params']} params {order}"
    return f"GeSSL {setting['inner_backend']} K={setting['inner_steps']} λ={setting['lookahead']} {order}"


def _step_key(record, base=None):
    """A step's (base method, backbone, batch size), with ``base`` in place of its own base method."""
    return base or record.get("base", "simclr"), record["backbone"], record["batch_size"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--suite", choices=["gessl", "variants", "dsa", "bases", "meta"], default="gessl")
    parser.add_argument("--backbones", nargs="+", default=["conv4"])
    parser.add_argument("--engines", nargs="+", default=["higher", "func"], help="GeSSL engines (suite gessl)")
    parser.add_argument("--bases", nargs="+", choices=SSL_BASES, default=SSL_BASES, help="base methods (suite bases)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every setting")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/SUITE_step.json)")
    args = parser.parse_args()
    todo = list(settings(args.suite, args.backbones, args.batch_sizes, args.engines, args.bases))
    samples = [[] for _ in todo]
    for r in range(args.rounds):
        for i, setting in enumerate(todo):
            samples[i].append(run_isolated(setting, args))
            last = samples[i][-1]
            print(f"round {r + 1}/{args.rounds} {setting['backbone']:>8} {setting['batch_size']:>4} "
                  f"{label(setting):<32} {last['seconds']:.3f} s  {last['cpu_seconds']:.3f} CPU s  {last['peak_mib']:.0f} MiB", flush=True)
    records = []
    for setting, runs in zip(todo, samples):
        records.append({**setting, "label": label(setting), "device": args.device, "images": runs[0]["images"],
                        "seconds": statistics.median(r["seconds"] for r in runs),
                        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                        "peak_mib": statistics.median(r["peak_mib"] for r in runs), "gflop": runs[0]["gflop"],
                        "gflop_per_s": statistics.median(r["gflop_per_s"] for r in runs)})
    # Each setting against the plain step (neither GeSSL nor a regulariser) of its base method; the
    # meta-learners (suite meta) against SimCLR's.
    plain = {_step_key(r): r for r in records if r["meta"] == "none" and "reg" not in r}
    reference_base = "simclr" if args.suite == "meta" else None
    peak, dtype = matmul_gflops(args.device)
    print(f"\ndevice {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{dtype} 4096² matrix product: {peak:.0f} GFLOP/s\n")
    print("| backbone | images | setting | s/step | img/s | × plain | CPU s/step | × plain | peak MiB | × plain | "
          "GFLOP/step | GFLOP/s | % of matmul |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        b = plain[_step_key(r, reference_base)]
        r["images_per_s"] = r["images"] / r["seconds"]  # an episodic method's step: one episode
        r["time_ratio"] = r["seconds"] / b["seconds"]
        r["cpu_time_ratio"] = r["cpu_seconds"] / b["cpu_seconds"]
        r["memory_ratio"] = r["peak_mib"] / max(b["peak_mib"], 1e-9)
        r["share_of_matmul_peak"] = r["gflop_per_s"] / peak
        print(f"| {r['backbone']} | {r['images']} | {r['label']} | {r['seconds']:.3f} | {r['images_per_s']:.0f} | "
              f"{r['time_ratio']:.2f} | {r['cpu_seconds']:.3f} | {r['cpu_time_ratio']:.2f} | {r['peak_mib']:.0f} | "
              f"{r['memory_ratio']:.2f} | {r['gflop']:.1f} | "
              f"{r['gflop_per_s']:.0f} | {100 * r['share_of_matmul_peak']:.0f} |")
    out = Path(args.out or f"benchmarks/results/{args.suite}_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
