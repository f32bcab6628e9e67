"""Benchmark of fdistill's fused f-divergence vs naive PyTorch, TRL and Liger: time, peak memory, equal results.

CPU (2 cores, about 10 minutes; float32 and fewer tokens than a GPU run):

    python scripts/bench_divergence.py --device cpu --shapes small,large --tokens 1024,128 --repeats 3 --warmup 0 \
        --out /tmp/bench_divergence_cpu.md

GPU (the issue's full shapes, bfloat16):

    python scripts/bench_divergence.py --device cuda --dtype bfloat16 --shapes small,large --tokens 8192 --repeats 10 \
        --warmup 3 --out /tmp/bench_divergence_cuda.md

Each row is one forward+backward of ``Σ_n term_n`` with gradients w.r.t. the student's hidden
states and LM-head weight, on random inputs (hidden ~ N(0, 1), heads ~ N(0, 0.02²)).
Methods: ``naive`` (both logits materialised, ``fdistill.divergences.step_divergence``: its closed-form logit
gradient), ``autograd`` (the same terms differentiated by autograd, as before 2026-12-04),
``fused`` (``fdistill.kernels.fused_divergence``, backend "auto"), ``trl``
(``ChunkedDivergenceFunction``), ``liger`` (``LigerFusedLinearJSDLoss``, chunked torch) and
``liger-triton`` (``LigerFusedLinearJSD``, CUDA only). TRL and Liger compute the generalised
JSD with β = ½, i.e. ½·KL(p‖m) + ½·KL(q‖m) with m = ½(p + q); it is compared with the naive
row ``jsd½`` = ½·(step_divergence js on teacher + js on student). Time: median of
``--repeats`` after ``--warmup`` runs (CUDA events on CUDA, perf_counter on CPU). Peak extra
memory: peak during the timed runs minus what was held before them (inputs, weights);
gradients count as extra. On CUDA torch.cuda.max_memory_allocated; on CPU the process's peak
RSS (VmHWM of /proc/self/status, reset through /proc/self/clear_refs before each method, with
glibc's mmap threshold pinned at 64 KiB so freed tensors leave the RSS). Roofline: matmul
FLOPs 2·N·V·(H_t + 3·H_s) over the throughput of one large matmul measured here.
"""

import argparse
import ctypes
import importlib
import json
import os
import shlex
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from fdistill.divergences import step_divergence
from fdistill.kernels import LinearHead, fused_divergence

SHAPES = {"small": (576, 576, 49152), "large": (2048, 4096, 128256)}  # (H_s, H_t, V): SmolLM2-135M; 8B -> 1B
KINDS = ("kl", "rkl", "js", "tvd")
JSD = "jsd½"  # the generalised JSD (β = ½) of TRL and Liger
METHODS = ("naive", "autograd", "fused", "trl", "liger", "liger-triton")
CPU_TOKENS = {"small": 1024, "large": 128}  # ~10 minutes for the whole table on 2 cores


# ----------------------------------------------------------------------------- methods: inputs -> scalar loss


def naive(kind, x, args):
    z_s = x.h_s @ x.w_s.T
    with torch.no_grad():
        z_t = x.h_t @ x.w_t.T
    if kind == JSD:
        halves = [step_divergence("js", z_s, z_t, on=side) for side in ("teacher", "student")]
        return (0.5 * (halves[0] + halves[1])).sum()
    return step_divergence(kind, z_s, z_t, on=args.on).sum()


def autograd(kind, x, args):
    """``naive`` with the step terms differentiated by autograd: what ``step_divergence`` did before its closed-form
    logit gradient (2026-12-04); the same terms."""
    from fdistill.divergences import _autograd_terms, _log_probs

    z_s = x.h_s @ x.w_s.T
    with torch.no_grad():
        z_t = x.h_t @ x.w_t.T
    log_p = _log_probs(z_t, 1.0, torch.float64 if z_s.dtype == torch.float64 else torch.float32)
    return _autograd_terms(z_s, log_p, kind, args.on, None, 1.0)[0].sum()


def fused(kind, x, args):
    return fused_divergence(
        kind, x.h_s, LinearHead(x.w_s), x.h_t, LinearHead(x.w_t), on=args.on, chunk_size=args.chunk_size, backend="auto"
    ).loss


def trl(kind, x, args):
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    divergence, _entropy = ChunkedDivergenceFunction.apply(x.h_s, x.w_s, None, x.h_t, x.w_t, None, 0.5)
    return divergence.sum()  # per-token generalised JSD (β = ½)


def liger(kind, x, args):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    n = x.h_s.shape[0]
    loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=x.h_s.is_cuda)
    labels = torch.zeros(n, dtype=torch.long, device=x.h_s.device)  # no ignored token: the mean is over all n
    return loss_fn(x.h_s, x.w_s, x.h_t, x.w_t, labels) * n


def liger_triton(kind, x, args):
    if not x.h_s.is_cuda:
        raise RuntimeError("CUDA only")
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    return LigerFusedLinearJSD(jsd_beta=0.5)(x.h_s, x.w_s, x.h_t, x.w_t, None) * x.h_s.shape[0]


FUNCTIONS = {
    "naive": naive,
    "autograd": autograd,
    "fused": fused,
    "trl": trl,
    "liger": liger,
    "liger-triton": liger_triton,
}


# ----------------------------------------------------------------------------- measurement


def preload():
    """Import the baselines before anything is measured, so that no import counts as a method's memory or time."""
    for module in (
        "trl.kernels.chunked_divergence",
        "liger_kernel.chunked_loss",
        "liger_kernel.transformers.fused_linear_jsd",
    ):
        try:
            importlib.import_module(module)
        except Exception:  # reported by the method itself as n/a
            pass


def _status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class PeakMemory:
    """Peak bytes allocated above the level at :meth:`reset` (CUDA allocator, or the process's RSS on CPU)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if not self.cuda:  # glibc: big blocks mmap'd and unmapped on free, so RSS follows the live tensors
            try:
                ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
            except OSError:
                pass

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:  # Linux only; elsewhere the memory columns read n/a
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current VmRSS
                self.base = _status_kib("VmRSS") * 1024
            except (OSError, KeyError):
                self.base = None

    def peak(self):
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return None if self.base is None else _status_kib("VmHWM") * 1024 - self.base


def cpu_seconds():
    """(busy CPU seconds of the whole machine, CPU seconds of this process), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            jiffies = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    t = os.times()
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def make_inputs(n, shape, dtype, device, seed=0):
    h_s_dim, h_t_dim, vocab = shape
    torch.manual_seed(seed)

    def randn(*size, std=1.0):
        return torch.randn(*size, dtype=dtype, device=device).mul_(std)

    return SimpleNamespace(
        h_s=randn(n, h_s_dim).requires_grad_(),
        h_t=randn(n, h_t_dim),
        w_s=randn(vocab, h_s_dim, std=0.02).requires_grad_(),
        w_t=randn(vocab, h_t_dim, std=0.02),
    )


def bench(fn, x, args, memory):
    """(median ms, peak extra bytes, loss, grad of the student hidden states) of ``fn`` forward+backward."""
    cuda = x.h_s.is_cuda

    def step():
        loss = fn()
        grad_h, _grad_w = torch.autograd.grad(loss, (x.h_s, x.w_s))
        return loss.detach(), grad_h

    for _ in range(args.warmup):
        step()
    memory.reset()
    times, last = [], None
    for _ in range(args.repeats):
        last = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            last = step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            last = step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), memory.peak(), last[0].double().item(), last[1].float()


def matmul_flops(device, dtype):
    """Measured FLOP/s of one large square matmul in ``dtype`` (median of 3 after a warm-up)."""
    n = 8192 if device.type == "cuda" else 3072
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(4):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[1:])


# ----------------------------------------------------------------------------- table


def fmt_bytes(b):
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB" if abs(b) >= 2**30 else f"{b / 2**20:.0f} MiB"


def fmt_ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}×"


def fmt_rel(a, b):
    return "–" if a is None or b is None else f"{abs(a - b) / max(abs(b), 1e-30):.1e}"


def table(rows):
    head = [
        "shape",
        "N",
        "method",
        "kind",
        "time ms",
        "vs naive",
        "peak extra mem",
        "vs naive",
        "loss rel.diff",
        "grad_h rel.diff",
        "roofline ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = r.get("ref") or {}
        if r.get("error"):
            cells = [f"n/a ({r['error']})"] + ["–"] * 6
        else:
            g = "–" if r["grad_rel"] is None else f"{r['grad_rel']:.1e}"
            cells = [
                f"{r['ms']:.1f}",
                fmt_ratio(r["ms"], ref.get("ms")),
                fmt_bytes(r["mem"]),
                fmt_ratio(r["mem"], ref.get("mem")),
                fmt_rel(r["loss"], ref.get("loss")),
                g,
                f"{r['roofline_ms']:.1f}",
            ]
        lines.append("| " + " | ".join([r["shape"], str(r["n"]), r["method"], r["kind"], *cells]) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,large", help="small, large or HsxHtxV, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--tokens",
        default=None,
        help="N, or one N per shape (default 8192 on CUDA; "
        + ", ".join(f"{k}={v}" for k, v in CPU_TOKENS.items())
        + ", 1024 otherwise on CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 10 on CUDA, 3 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default 3 on CUDA, 0 on CPU (seconds-long runs)")
    parser.add_argument("--on", default="teacher", choices=("teacher", "student"), help="the sampling side (js only)")
    parser.add_argument("--chunk-size", type=int, default=None, help="fused rows per chunk (default: fdistill's)")
    parser.add_argument("--out", default=None, help="write the output here (markdown) and next to it as .json")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    args.repeats = args.repeats or (10 if cuda else 3)
    args.warmup = (3 if cuda else 0) if args.warmup is None else args.warmup
    names, kinds, methods = args.shapes.split(","), args.kinds.split(","), args.methods.split(",")
    tokens = (
        [int(t) for t in args.tokens.split(",")]
        if args.tokens
        else [8192 if cuda else CPU_TOKENS.get(name, 1024) for name in names]
    )
    tokens = tokens * len(names) if len(tokens) == 1 else tokens

    preload()
    start_cpu, start_wall = cpu_seconds(), time.perf_counter()
    memory = PeakMemory(device)
    flops = matmul_flops(device, dtype)
    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else (f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at start")
    )
    out = [
        f"$ {shlex.join(['python', *sys.argv])}",
        "",
        f"- device: {where}; torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}; "
        f"repeats {args.repeats} (median) after {args.warmup} warm-up; fused chunk_size "
        f"{args.chunk_size or 'default'}; js on the {args.on} side",
        f"- measured matmul throughput ({str(dtype).removeprefix('torch.')}): {flops / 1e12:.3f} TFLOP/s",
        "- peak extra memory: "
        + (
            "torch.cuda.max_memory_allocated() − memory_allocated() before the timed runs"
            if cuda
            else "peak RSS (VmHWM, reset via /proc/self/clear_refs) − RSS before the timed runs"
        )
        + "; includes the gradients (N×H_s and V×H_s)",
        "- trl / liger: generalised JSD β=½, compared with the naive `jsd½` row; fused/naive: fdistill's terms",
    ]
    if not cuda and not args.tokens:
        scaled = ", ".join(f"{k}={v}" for k, v in CPU_TOKENS.items())
        out.append(
            f"- CPU defaults: N scaled down ({scaled}) so that the table takes ~10 minutes on 2 cores; "
            "the issue's N=8192 is for a GPU"
        )
    for line in out:
        print(line, flush=True)
    rows = []
    for name, n in zip(names, tokens):
        shape = SHAPES[name] if name in SHAPES else tuple(int(p) for p in name.split("x"))  # custom HsxHtxV
        h_s, h_t, vocab = shape
        roofline_ms = 2 * n * vocab * (h_t + 3 * h_s) / flops * 1e3
        out.append(f"- shape {name}: N={n}, H_s={h_s}, H_t={h_t}, V={vocab}; roofline {roofline_ms:.1f} ms")
        print(out[-1], flush=True)
        x = make_inputs(n, shape, dtype, device)
        refs = {}
        for method in methods:
            method_kinds = kinds if method in ("naive", "autograd", "fused") else [JSD]
            if method == "naive" and any(m not in ("naive", "autograd", "fused") for m in methods):
                method_kinds = [*kinds, JSD]
            for kind in method_kinds:
                row = dict(shape=name, n=n, method=method, kind=kind, roofline_ms=roofline_ms, ref=refs.get(kind))
                try:
                    fn = FUNCTIONS[method]
                    ms, mem, loss, grad_h = bench(lambda fn=fn, kind=kind, x=x: fn(kind, x, args), x, args, memory)
                    ref_grad = refs.get(kind, {}).get("grad_h")
                    grad_rel = None if ref_grad is None else ((grad_h - ref_grad).norm() / ref_grad.norm()).item()
                    row.update(ms=ms, mem=mem, loss=loss, grad_rel=grad_rel)
                    if method == "naive":
                        refs[kind] = row["ref"] = dict(ms=ms, mem=mem, loss=loss, grad_h=grad_h)
                except Exception as e:  # one failing method must not stop the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                if cuda:
                    torch.cuda.empty_cache()
                rows.append(row)
                done = f"n/a ({row['error']})" if "error" in row else f"{row['ms']:.1f} ms, {fmt_bytes(row['mem'])}"
                print(f"  {method:12s} {kind:4s} {done}", file=sys.stderr, flush=True)
        del x
    end_cpu = cpu_seconds()
    if not cuda and start_cpu and end_cpu:  # CPU timings are only meaningful if nothing else ran meanwhile
        others = (end_cpu[0] - start_cpu[0]) - (end_cpu[1] - start_cpu[1])
        share = others / ((time.perf_counter() - start_wall) * os.cpu_count())
        out.append(f"- other processes used {share:.0%} of this machine's CPU time during the run")
        print(out[-1])
    text = "\n".join(out) + "\n\n" + table(rows)
    print("\n" + table(rows), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        keep = ("shape", "n", "method", "kind", "ms", "mem", "loss", "grad_rel", "roofline_ms", "error")
        with open(args.out.removesuffix(".md") + ".json", "w") as f:
            json.dump([{k: r[k] for k in keep if k in r} for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
