"""Throughput benchmark of the labelling job: every installed backend, decode, end to end, and a naive baseline.

Run from the repository root with the project's venv active (see benchmarks/README.md)::

    python benchmarks/throughput.py                      # N=1000 images, 3 interleaved repeats, every backend
    python benchmarks/throughput.py --n 100 --repeats 1  # a quick check
    python benchmarks/throughput.py --corpus web --n 2000 --stages model e2e  # the backends' acceptance run
    python benchmarks/throughput.py --json bench.json    # all figures, for comparison across commits
    python benchmarks/throughput.py --memory-check       # peak RSS of the job on 1,000 and 10,000 images

The backends are those of `--backends` that are installed (default: all): tensorflow and openvino run `--model` (the
float SavedModel), litert runs `--tflite-model` (the uint8 .tflite). Each repeat measures, in this order, every
backend's (a) and (c) in turn (the backends' order rotates from one repeat to the next), then (b) and both (d):

(a) model: `beam_pipeline.model.load.load(...).predict` on pre-decoded uint8 [B,224,224,3] batches, B = the job's
    default --max-batch-size, in this process;
(b) decode: `beam_pipeline.decode.preprocess.decode_image` over the corpus bytes (read from disk before the clock
    starts), on a pool of os.cpu_count() threads (Pillow releases the GIL), in this process;
(c) end to end: `python -m beam_pipeline` with only --input/--output/--model/--labels/--backend, as a subprocess:
    images/s = N / wall time of the whole command (interpreter start, imports and model load included), the images/s
    the job prints itself (its pipeline run only), and the marginal rate once start-up (a 1-image run) is paid; its
    CPU time (user + system), which other jobs on a shared machine disturb far less than its wall time; the peak RSS
    of its largest process; and the share of images whose top-1 class equals tensorflow's in that repeat;
(d) naive: the pipeline as Beam's documentation writes one (benchmarks/naive_baseline.py), as a subprocess,
    images/s = N / wall time of the whole command; twice: on Beam's defaults (DirectRunner), and on the runner
    settings the job defaults to (beam_pipeline.launch.cli.local_defaults), so that end-to-end / naive is given both
    with the runner choice mixed in and with the design alone.

The limit is 1 / (1/model + 1/decode): the best the two stages can do sharing the same cores. It prints figures as
median [min-max] over the repeats, and ratios taken within one repeat, then summarised the same way: each backend's
wall (and CPU) time over tensorflow's, end-to-end / limit and end-to-end / each naive. Nothing here asserts a time.

This file drives the runs (backends, stages, repeats) and summarises them; corpus.py builds the corpus, stages.py
holds the measurements (a) to (d), measure.py times each subprocess and reads its peak RSS, and naive_baseline.py is
the naive pipeline. They import each other as sibling modules: run the script by its path, as above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus import (
    CORPORA,
    CORPUS_VERSION,
    JPEG_QUALITY,
    build_corpus,
    corpus_files,
    describe_corpus,
    duplicate_corpus,
    shared_dir,
)
from figures import agreement, environment, fmt, limit, spread
from stages import (
    JobDefaults,
    ModelBench,
    job_defaults,
    job_runner_args,
    measure_decode,
    measure_end_to_end,
    measure_naive,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# What each compared run uses: its --backend and any runner arguments. `tensorflow-mp2` is the default job on
# FnApiRunner's multi_processing layout with 2 workers (one SDK process per core, as Dataflow runs), against the
# default in-memory worker with its decode thread pool.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tensorflow": ("tensorflow", ()),
    "openvino": ("openvino", ()),
    "litert": ("litert", ()),
    "tensorflow-mp2": (
        "tensorflow",
        ("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"),
    ),
}
BACKEND_ORDER = tuple(VARIANTS)
REFERENCE_BACKEND = "tensorflow"  # wall-time ratios and top-1 agreement are taken against this backend
# The naive baseline's two runs, by their key in the figures: on Beam's defaults, and on the job's default runner
# settings (the same Beam arguments the job adds when given no --runner).
NAIVE_RUNS = {"naive": "DirectRunner defaults", "naive_job_runner": "job's runner settings"}
MEMORY_CHECK_SIZES = (1000, 10000)
MEMORY_FLAT_WITHIN = 0.15  # the targets, reported, not asserted
MEMORY_LIMIT_MIB = 1536.0  # 1.5 GiB


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark


def installed_backends(wanted: Sequence[str], model: str, tflite_model: str) -> dict[str, str]:
    """{backend: the model it runs} for the wanted backends that are installed (a missing one is reported)."""
    from beam_pipeline.model import resolve

    chosen = {}
    for variant in BACKEND_ORDER:
        if variant not in wanted:
            continue
        backend = VARIANTS[variant][0]
        spec = tflite_model if backend == "litert" else model
        try:
            resolve.choose_backend(backend, resolve.kind_of(spec))
        except resolve.BackendError as exc:
            print(f"skipping --backend {backend}: {exc}")
            continue
        chosen[variant] = spec
    if not chosen:
        raise SystemExit("none of the backends asked for is installed")
    return chosen


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Builds (or reuses) the corpus and runs the interleaved, repeated measurements; prints and returns figures."""
    stages = set(args.stages)
    corpus = build_corpus(args.n, corpus=args.corpus)
    files = corpus_files(corpus)
    defaults = job_defaults()
    env = environment()
    sizes = describe_corpus(corpus)
    print(f"corpus: {corpus} ({len(files)} JPEGs, quality {JPEG_QUALITY})")
    for size, info in sizes.items():
        print(f"  {size:>9}: {info['count']:5d} images, mean {info['mean_kb']} kB")
    print(
        f"commit {env['commit']}{' (dirty)' if env['dirty'] else ''}, {env['cpu_count']} cores ({env['cpu']}), "
        f"beam {env['apache_beam']}, tensorflow {env['tensorflow']}, openvino {env['openvino']}, "
        f"ai-edge-litert {env['ai_edge_litert']}, load average {env['load_average_at_start']}"
    )
    if args.job_arg:
        print(f"extra job arguments: {' '.join(args.job_arg)}")
    backends = installed_backends(args.backends, args.model, args.tflite_model)
    names = list(backends)
    print("backends: " + ", ".join(f"{b} ({Path(m).name})" for b, m in backends.items()))
    naive_args = {"naive": [], "naive_job_runner": job_runner_args()}

    # The model alone does not depend on the runner layout: measured once per backend.
    benches = {
        b: ModelBench(m, b, files, defaults) for b, m in backends.items() if "model" in stages and not VARIANTS[b][1]
    }
    size = next(iter(benches.values())).classifier.input_size if benches else (224, 224)
    repeats: list[dict[str, Any]] = []
    for r in range(args.repeats):
        tag = f"[{r + 1}/{args.repeats}]"
        figures: dict[str, Any] = {"backends": {b: {} for b in names}}
        for backend in names[r % len(names) :] + names[: r % len(names)]:  # each repeat starts with the next one
            spec, figs = backends[backend], figures["backends"][backend]
            if backend in benches:
                figs["model"] = benches[backend].run(args.n)
                print(f"{tag} {backend:<10} model      {figs['model']['images_per_s']:8.1f} images/s", flush=True)
            if "e2e" in stages:
                runtime, layout = VARIANTS[backend]
                job_args = [*args.job_arg, *layout]
                e2e = figs["end_to_end"] = measure_end_to_end(corpus, args.n, spec, args.labels, job_args, runtime)
                # The fixed cost of a run (interpreter, imports, launch checks, model load, runner start-up) is the
                # wall time of the same command on one image; what is left is the marginal rate.
                startup = figs["startup"] = measure_end_to_end(files[0], 1, spec, args.labels, job_args, runtime)
                startup.pop("top1")
                e2e["marginal_images_per_s"] = (args.n - 1) / (e2e["wall_s"] - startup["wall_s"])
                print(
                    f"{tag} {backend:<10} end to end {e2e['images_per_s']:8.1f} images/s, wall {e2e['wall_s']:.1f} s "
                    f"(job prints {e2e['job_printed_images_per_s']}; start-up {startup['wall_s']:.1f} s, "
                    f"marginal {e2e['marginal_images_per_s']:.1f} images/s), peak RSS {e2e['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        if "decode" in stages:
            figures["decode"] = measure_decode(files, size, defaults)
            print(f"{tag} decode                {figures['decode']['images_per_s']:8.1f} images/s", flush=True)
        if "naive" in stages:
            runs = list(NAIVE_RUNS)
            for key in runs[r % len(runs) :] + runs[: r % len(runs)]:  # each repeat starts with the other one
                naive = figures[key] = measure_naive(corpus, args.n, args.model, naive_args[key])
                print(
                    f"{tag} naive                 {naive['images_per_s']:8.1f} images/s, "
                    f"peak RSS {naive['peak_rss_mib']:.0f} MiB ({NAIVE_RUNS[key]})",
                    flush=True,
                )
        _ratios(figures)
        repeats.append(figures)

    summary = summarise(repeats, names)
    print_summary(args, summary, names, backends, benches, defaults, repeats)
    return {
        "benchmark": "throughput",
        "n": args.n,
        "repeats": args.repeats,
        "stages": sorted(stages),
        "backends": backends,
        "model": args.model,
        "tflite_model": args.tflite_model,
        "labels": args.labels,
        "job_args": args.job_arg,
        "naive_runner_args": naive_args,
        "corpus": {"path": str(corpus), "kind": args.corpus, "version": CORPUS_VERSION, "sizes": sizes},
        "environment": env,
        "summary": summary,
        "per_repeat": repeats,
    }


def _ratios(figures: dict[str, Any]) -> None:
    """Adds one repeat's ratios: against the limit, the naive baseline and the reference backend (same repeat)."""
    reference = figures["backends"].get(REFERENCE_BACKEND, {}).get("end_to_end")
    for figs in figures["backends"].values():
        e2e = figs.get("end_to_end")
        if "model" in figs and "decode" in figures:
            figs["limit_images_per_s"] = limit(figs["model"]["images_per_s"], figures["decode"]["images_per_s"])
            if e2e:
                figs["end_to_end_over_limit"] = e2e["images_per_s"] / figs["limit_images_per_s"]
                figs["marginal_over_limit"] = e2e["marginal_images_per_s"] / figs["limit_images_per_s"]
        for key in NAIVE_RUNS:
            if e2e and key in figures:
                figs[f"end_to_end_over_{key}"] = e2e["images_per_s"] / figures[key]["images_per_s"]
        if e2e and reference:
            figs["wall_over_reference"] = e2e["wall_s"] / reference["wall_s"]
            figs["cpu_over_reference"] = e2e["cpu_s"] / reference["cpu_s"]
            figs["top1_agreement_with_reference"] = agreement(e2e["top1"], reference["top1"])
    for figs in figures["backends"].values():  # the per-image labels are not kept in the JSON
        figs.get("end_to_end", {}).pop("top1", None)


def summarise(repeats: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Median [min-max] over the repeats of every figure, per backend."""

    def over(path: Callable[[dict[str, Any]], Any]) -> dict[str, float] | None:
        values = []
        for figures in repeats:
            try:
                values.append(path(figures))
            except KeyError:
                continue
        return spread(values)

    def per_backend(b: str) -> dict[str, Any]:
        def get(*keys: str) -> Callable[[dict[str, Any]], Any]:
            def path(figures: dict[str, Any]) -> Any:
                value = figures["backends"][b]
                for key in keys:
                    value = value[key]
                return value

            return path

        return {
            "model_images_per_s": over(get("model", "images_per_s")),
            "limit_images_per_s": over(get("limit_images_per_s")),
            "end_to_end_images_per_s": over(get("end_to_end", "images_per_s")),
            "end_to_end_wall_s": over(get("end_to_end", "wall_s")),
            "end_to_end_job_printed_images_per_s": over(get("end_to_end", "job_printed_images_per_s")),
            "startup_seconds": over(get("startup", "wall_s")),
            "end_to_end_marginal_images_per_s": over(get("end_to_end", "marginal_images_per_s")),
            "end_to_end_over_limit": over(get("end_to_end_over_limit")),
            "marginal_over_limit": over(get("marginal_over_limit")),
            "end_to_end_over_naive": over(get("end_to_end_over_naive")),
            "end_to_end_over_naive_job_runner": over(get("end_to_end_over_naive_job_runner")),
            "wall_over_reference": over(get("wall_over_reference")),
            "end_to_end_cpu_s": over(get("end_to_end", "cpu_s")),
            "cpu_over_reference": over(get("cpu_over_reference")),
            "top1_agreement_with_reference": over(get("top1_agreement_with_reference")),
            "end_to_end_peak_rss_mib": over(get("end_to_end", "peak_rss_mib")),
            "startup_peak_rss_mib": over(get("startup", "peak_rss_mib")),
        }

    return {
        "backends": {b: per_backend(b) for b in names},
        "decode_images_per_s": over(lambda f: f["decode"]["images_per_s"]),
        **{f"{key}_images_per_s": over(lambda f, key=key: f[key]["images_per_s"]) for key in NAIVE_RUNS},
        **{f"{key}_peak_rss_mib": over(lambda f, key=key: f[key]["peak_rss_mib"]) for key in NAIVE_RUNS},
    }


def print_summary(
    args: argparse.Namespace,
    summary: dict[str, Any],
    names: Sequence[str],
    backends: dict[str, str],
    benches: dict[str, ModelBench],
    defaults: JobDefaults,
    repeats: list[dict[str, Any]],
) -> None:
    """The figures as a table: one column per backend, median [min-max] over the repeats."""
    batch = next(iter(benches.values())).batch_size if benches else defaults.max_batch_size
    width = 26
    print()
    print(
        f"N = {args.n} images ({args.corpus} corpus), {args.repeats} repeat(s), backends interleaved (order rotated "
        "each repeat); median [min-max] over repeats"
    )
    print(f"  {'':<48}" + "".join(f"{b:>{width}}" for b in names))
    kinds = [".tflite" if backends[b].endswith(".tflite") else "SavedModel" for b in names]
    print(f"  {'model (--model, --tflite-model)':<48}" + "".join(f"{kind:>{width}}" for kind in kinds))
    rows = [
        (f"(a) model alone, batch {batch}, pre-decoded, images/s", "model_images_per_s", 1),
        ("    limit 1/(1/a + 1/b), images/s", "limit_images_per_s", 1),
        ("(c) end to end, N / wall time, images/s", "end_to_end_images_per_s", 1),
        ("    wall time of the command, s", "end_to_end_wall_s", 1),
        (f"    wall time / {REFERENCE_BACKEND}'s (same repeat)", "wall_over_reference", 2),
        ("    CPU time of the command (user + system), s", "end_to_end_cpu_s", 1),
        (f"    CPU time / {REFERENCE_BACKEND}'s (same repeat)", "cpu_over_reference", 2),
        ("    start-up: wall time of a 1-image run, s", "startup_seconds", 1),
        ("    steady: marginal (N-1)/(wall - start-up), img/s", "end_to_end_marginal_images_per_s", 1),
        ("    steady: as the job prints it, images/s", "end_to_end_job_printed_images_per_s", 1),
        (f"    top-1 agrees with {REFERENCE_BACKEND}'s (share)", "top1_agreement_with_reference", 3),
        ("    end to end / limit (wall)", "end_to_end_over_limit", 2),
        ("    end to end / limit (marginal)", "marginal_over_limit", 2),
        *((f"    end to end / naive ({label})", f"end_to_end_over_{key}", 2) for key, label in NAIVE_RUNS.items()),
        ("    peak RSS of the job's largest process, MiB", "end_to_end_peak_rss_mib", 0),
        ("    peak RSS of a 1-image run, MiB", "startup_peak_rss_mib", 0),
    ]
    for label, key, digits in rows:
        cells = [summary["backends"][b][key] for b in names]
        if any(cell is not None for cell in cells):
            print(f"  {label:<48}" + "".join(f"{fmt(cell, digits):>{width}}" for cell in cells))
    if summary["decode_images_per_s"] is not None:
        label = f"(b) decode alone, {os.cpu_count()} threads"
        print(f"  {label:<48} {fmt(summary['decode_images_per_s'], 1, ' images/s')}")
    for key, label in NAIVE_RUNS.items():
        images_per_s = summary[f"{key}_images_per_s"]
        if images_per_s is not None:
            runner = next(f[key]["runner"] for f in repeats if key in f)
            print(f"  {f'(d) naive ({label}), N / wall time':<48} {fmt(images_per_s, 1, ' images/s')}")
            print(f"  {'    peak RSS':<48} {fmt(summary[f'{key}_peak_rss_mib'], 1, ' MiB')}")
            print(f"  {'    ran on':<48} {runner}")
    print("  (wall times include interpreter start, imports and model load; the job's own figure covers its run only)")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"  load average at the end: {load}")


# ----------------------------------------------------------------------------------------------------------------------
# The memory check


def run_memory_check(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the job end to end on 1,000 and 10,000 images and prints the two peak RSS values and their ratio."""
    small_n, large_n = MEMORY_CHECK_SIZES
    small = build_corpus(small_n)
    corpora = {small_n: small, large_n: duplicate_corpus(large_n, small)}
    results = {}
    for n, corpus in corpora.items():
        print(f"end to end on {n} images ({corpus}) ...", flush=True)
        results[n] = measure_end_to_end(corpus, n, args.model, args.labels, args.job_arg)
        results[n].pop("top1")
        print(
            f"  peak RSS {results[n]['peak_rss_mib']:.0f} MiB, {results[n]['images_per_s']:.1f} images/s "
            f"(N / wall), job prints {results[n]['job_printed_images_per_s']} images/s",
            flush=True,
        )
    ratio = results[large_n]["peak_rss_mib"] / results[small_n]["peak_rss_mib"]
    peak = max(r["peak_rss_mib"] for r in results.values())
    flat = abs(ratio - 1) <= MEMORY_FLAT_WITHIN
    under = peak < MEMORY_LIMIT_MIB
    print()
    print(f"peak RSS, N={small_n}: {results[small_n]['peak_rss_mib']:.0f} MiB")
    print(f"peak RSS, N={large_n}: {results[large_n]['peak_rss_mib']:.0f} MiB")
    print(f"ratio {large_n}/{small_n}: {ratio:.3f}")
    print(
        f"issue's targets: flat within {MEMORY_FLAT_WITHIN:.0%}: {'yes' if flat else 'NO'}; "
        f"under {MEMORY_LIMIT_MIB / 1024:.1f} GiB: {'yes' if under else 'NO'}"
    )
    print("(peak RSS = largest single process of the job's tree, from getrusage(RUSAGE_CHILDREN).ru_maxrss)")
    return {
        "benchmark": "memory-check",
        "model": args.model,
        "job_args": args.job_arg,
        "environment": environment(),
        "runs": {str(n): r for n, r in results.items()},
        "peak_rss_ratio": ratio,
        "flat_within_15_percent": flat,
        "under_1_5_gib": under,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    shared = shared_dir()
    parser = argparse.ArgumentParser(
        description="Throughput of the labelling job on each backend, against its model and decode limits and a naive "
        "baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1000, help="images in the corpus (--memory-check uses 1000 and 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every measurement")
    parser.add_argument(
        "--model",
        default=str(shared / "models" / "mobilenet_v3_small_100_224_float"),
        help="the job's --model on the tensorflow and openvino backends (and for the naive baseline)",
    )
    parser.add_argument(
        "--tflite-model",
        default=str(shared / "models" / "mobilenet_v3_small_100_224_uint8.tflite"),
        help="the job's --model on the litert backend",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKEND_ORDER,
        default=list(BACKEND_ORDER),
        help="the backends to compare, interleaved (those not installed are skipped)",
    )
    parser.add_argument(
        "--corpus",
        choices=sorted(CORPORA),
        default="mixed",
        help="mixed: 40%% 500x375, 30%% 1024x768, 20%% 1920x1080, 10%% 4000x3000; web: every image 500x375",
    )
    parser.add_argument("--labels", default=str(shared / "labels" / "ImageNetLabels.txt"), help="the job's --labels")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument(
        "--memory-check", action="store_true", help="instead: peak RSS of the job on 1,000 and 10,000 images"
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=("model", "decode", "e2e", "naive"),
        default=["model", "decode", "e2e", "naive"],
        help="which measurements to run (naive: both naive runs)",
    )
    parser.add_argument(
        "--job-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the job's command line, repeatable, e.g. --job-arg=--direct_num_workers=1 "
        "(the default run passes none)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark (or the memory check); returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if str(REPO_ROOT) not in sys.path:  # beam_pipeline from this checkout, installed or not
        sys.path.insert(0, str(REPO_ROOT))
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        raise SystemExit("--n and --repeats must be at least 1")
    results = run_memory_check(args) if args.memory_check else run_benchmark(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
