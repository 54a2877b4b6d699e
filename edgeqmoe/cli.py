"""The ``edgeqmoe`` command line. Commands parse their options, build settings and
call one function each; the work lives in the packages."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="edgeqmoe: an always-on sound classifier with bit-packed low-bit heads.")


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"edgeqmoe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """edgeqmoe: an always-on sound classifier with bit-packed low-bit heads."""
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (each prints what it measured and the machine).")
app.add_typer(bench_app, name="bench")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained embedder weights: where they are, fetching them.")
app.add_typer(weights_app, name="weights")
profiles_app = typer.Typer(no_args_is_help=True, help="Deployment profiles: list, show, validate.")
app.add_typer(profiles_app, name="profiles")
logs_app = typer.Typer(no_args_is_help=True, help="Read the daemon's logs back: summary, plot, compare.")
app.add_typer(logs_app, name="logs")


@logs_app.command("summary")
def logs_summary(folders: List[str] = typer.Argument(..., help="Log folder(s); several (a fleet): per device "
                                                                  "and overall."),
                 since: Optional[str] = typer.Option(None, help="Unix seconds or ISO time (UTC)."),
                 until: Optional[str] = typer.Option(None), json_out: bool = typer.Option(False, "--json")):
    """Uptime, windows, detections, latency, jitter, drops, energy, clips, disk use."""
    import json as _json

    from .inspect.logs import LogsError, format_summary, summary

    try:
        s = summary(folders if len(folders) > 1 else folders[0], since, until)
    except LogsError as e:
        fail(str(e))
    typer.echo(_json.dumps(s, indent=1) if json_out else format_summary(s))


@logs_app.command("plot")
def logs_plot(folder: str, out: str = typer.Option("report.png", "-o", "--out"),
              since: Optional[str] = typer.Option(None), until: Optional[str] = typer.Option(None),
              clip: Optional[str] = typer.Option(None, help="The spectrogram of one event clip instead: its file name, "
                                                           "a path, or 'latest'.")):
    """Latency histogram and timeline, detections over time, power over time (PNG); or an event clip's spectrogram."""
    from .inspect.logs import LogsError, plot, plot_clip

    try:
        typer.echo(f"wrote {plot_clip(folder, clip, out) if clip else plot(folder, out, since, until)}")
    except LogsError as e:
        fail(str(e))


@logs_app.command("compare")
def logs_compare(a: str, b: str, stage: str = typer.Option("head", help="embed, head, decision or total."),
                 json_out: bool = typer.Option(False, "--json")):
    """Two runs: Levene (Brown-Forsythe) on latency variance, Welch on means, Cohen's d."""
    import json as _json

    from .inspect.logs import LogsError, compare
    from .stats import percent

    try:
        r = compare(a, b, stage)
    except LogsError as e:
        fail(str(e))
    if json_out:
        typer.echo(_json.dumps(r, indent=1))
    else:
        for key in ("latency_ms", "energy_mj"):
            v = r.get(key)
            if v:
                typer.echo(f"{key}: A mean {v['mean_a']:.4f} std {v['std_a']:.4f} (n={v['n_a']}); B mean "
                           f"{v['mean_b']:.4f} std {v['std_b']:.4f} (n={v['n_b']}); variance reduction "
                           f"{percent(v['variance_reduction'])}, Levene p={v['levene_p']:.3g}, Welch "
                           f"p={v['welch_p']:.3g}, Cohen's d={v['cohens_d']:.2f}")
        typer.echo(f"verdict: {r['verdict']}")


def fail(message: str, code: int = 2):
    """One clear paragraph on stderr, then exit with ``code``."""
    typer.echo(f"edgeqmoe: {message}", err=True)
    raise typer.Exit(code)


@app.command("run")
def run_cmd(
    profile: str = typer.Option("balanced", "--profile", "-p", help="Profile name or path to a .yaml file."),
    source: Optional[str] = typer.Option(None, help="mic, mic:DEVICE, file:PATH or dir:PATH (default: the profile's)."),
    realtime: Optional[bool] = typer.Option(None, "--realtime/--fast", help="File sources: real time or as fast as possible."),
    duration: Optional[float] = typer.Option(None, min=0.001, help="Stop after this many seconds of audio (a "
                                                                      "microphone: of listening)."),
    log_dir: Optional[str] = typer.Option(None, help="Log folder (default: the profile's logging.dir)."),
    kernel: Optional[str] = typer.Option(None, help="Kernel variant, overriding the profile."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No start line and no event lines (problems are still "
                                                            "said)."),
    json_out: bool = typer.Option(False, "--json", help="Also write every window record to stdout, a JSON line each."),
    device: Optional[str] = typer.Option(None, help="This machine's name in records, MQTT topics and Home Assistant "
                                                    "(default: the profile's device, else the host name)."),
):
    """Listen and classify every window, writing what was heard to the log folder."""
    from .daemon.run import Signals

    signals = Signals().install()  # first: a SIGHUP while starting is kept for later, not fatal
    from .daemon.pipeline import PipelineError
    from .daemon.profiles import ProfileError, load_profile
    from .daemon.run import Daemon
    from .daemon.sources import SourceError
    from .kernels import KernelChoiceError
    from .settings import SettingsError

    from .daemon.mqtt import MqttError

    from .daemon.profiles import DEVICE_NAME

    if device is not None and not DEVICE_NAME.fullmatch(device):
        fail(f"--device {device!r}: use 1-64 letters, digits, _ . - (starting with a letter or digit)")
    overrides = {"model": {"kernel": kernel}} if kernel else None
    try:
        p = load_profile(profile, overrides)
        d = Daemon(p, source=source, duration=duration, log_dir=log_dir, realtime=realtime, signals=signals,
                   quiet=quiet, json_out=_stdout_lines() if json_out else None, device=device)
        code = d.run()
    except (ProfileError, SettingsError, PipelineError, SourceError, KernelChoiceError, MqttError, OSError) as e:
        fail(str(e))
    typer.echo(f"edgeqmoe: stopped after {d.windows} windows; logs in {d.log_dir}", err=True)
    raise typer.Exit(code)


def _stdout_lines():
    """Write bytes lines to stdout at once (a reader at the other end of a pipe sees each window)."""
    import sys

    out = sys.stdout.buffer

    def write(line: bytes) -> None:
        try:
            out.write(line)
            out.flush()
        except BrokenPipeError:  # the reader went away: the daemon and its logs go on
            pass

    return write


@app.command("labels")
def labels_cmd(search: Optional[str] = typer.Argument(None, help="Only names containing this (any case).")):
    """The 527 AudioSet classes that a profile's listen: section can name (mn04 embedder)."""
    from .embed.audioset import audioset_labels

    for i, name in enumerate(audioset_labels()):
        if search is None or search.lower() in name.lower():
            typer.echo(f"{i:3d}  {name}")


@app.command("devices")
def devices_cmd():
    """List audio input devices (index, name, channels, default sample rate)."""
    from .daemon.sources import list_devices

    try:
        devs = list_devices()
    except Exception as e:  # PortAudio missing or broken
        fail(f"cannot query audio devices: {e}. Install PortAudio (libportaudio2) or use --source file:PATH")
    if not devs:
        fail("no audio input devices found; use --source file:PATH or --source dir:PATH to classify recordings")
    for d in devs:
        mark = "*" if d["default"] else " "
        typer.echo(f"{mark}{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")


@profiles_app.command("list")
def profiles_list():
    """Profiles that --profile NAME finds."""
    from .daemon.profiles import available_profiles, load_profile
    from .settings import SettingsError

    for name, path in available_profiles().items():
        try:
            desc = load_profile(str(path)).description
        except SettingsError as e:
            desc = f"INVALID: {e}"
        typer.echo(f"{name:18} {desc}  [{path}]")


def _profile_or_fail(name_or_path: str):
    """The profile, or exit 2 with the file, key and what is allowed."""
    from .daemon.profiles import ProfileError, load_profile
    from .settings import SettingsError

    try:
        return load_profile(name_or_path)
    except (ProfileError, SettingsError) as e:
        fail(str(e))


@profiles_app.command("show")
def profiles_show(name: str):
    """All settings of a profile, defaults included, as YAML."""
    import yaml

    from .settings import to_dict

    p = _profile_or_fail(name)
    d = to_dict(p)
    d["model"].pop("_base", None)
    for internal in ("source_file", "source_mtime"):
        d.pop(internal, None)
    # a valid profile as it is (profiles validate accepts it); where things come from in comments
    typer.echo(f"# profile {p.name!r} from {p.source_file}\n# model.bundle resolves to {p.model.bundle_path()}")
    typer.echo(yaml.safe_dump(d, sort_keys=False))


@profiles_app.command("validate")
def profiles_validate(path: str):
    """Check a profile file; exit 2 with the file, key and what is allowed if it is wrong."""
    import os as _os

    from .model.bundle import BundleError, load_bundle

    p = _profile_or_fail(path)
    problems = []
    for key, b in (("model.bundle", p.model.bundle), ("model.fallback_bundle", p.model.fallback_bundle)):
        if not b:
            continue
        where = p.model.bundle_path(b)
        if not _os.path.isfile(where):
            problems.append(f"{key}: bundle {b!r} not found at {where} (a bare name is a shipped bundle or a file "
                            "beside the profile; a path is relative to the profile's folder)")
            continue
        try:
            load_bundle(where)
        except BundleError as e:
            problems.append(f"{key}: {e}")
    if problems:
        fail(f"{p.source_file}: " + ("\n  ".join([f"{len(problems)} problems:"] + problems) if len(problems) > 1
                                     else problems[0]))
    typer.echo(f"{p.source_file}: valid (profile {p.name!r}, version {p.version})")


@app.command("embed")
def embed_cmd(
    dataset: str = typer.Argument(..., help="Metadata CSV (UrbanSound8K or ESC-50 layout) or a folder per class."),
    embedder: str = typer.Option("mn04", "--embedder", "-e", help="mn04 or logmel-stats."),
    out: str = typer.Option("cache", "--out", "-o", help="Folder for the embedding cache."),
    window: Optional[float] = typer.Option(None, help="Cut clips into windows of this many seconds."),
    hop: Optional[float] = typer.Option(None, help="Hop between windows in seconds (default: the window)."),
    weights: Optional[str] = typer.Option(None, help="Path of the embedder weights (file or folder)."),
    workers: int = typer.Option(2, min=1, help="Threads that read and decode files."),
    threads: int = typer.Option(1, min=1, help="Threads of the embedder model."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Embed every clip of a dataset into a resumable cache (.npz of plain arrays)."""
    import json as _json

    from .audio.datasets import DatasetError, read_dataset
    from .embed import WeightsError, get_embedder
    from .embed.cache import embed_dataset

    try:
        ds = read_dataset(dataset)
        emb = get_embedder(embedder, weights=weights, threads=threads)
    except (DatasetError, WeightsError, ValueError) as e:
        fail(str(e))
    failures = []
    with typer.progressbar(length=len(ds), label=f"embedding {ds.name} with {embedder}", file=None) as bar:
        last = [0]

        def progress(done, total):
            bar.update(done - last[0])
            last[0] = done

        summary = embed_dataset(ds, emb, out, window=window, hop=hop, workers=workers, on_progress=progress,
                                on_failure=lambda f, r: failures.append((f, r)))
    for f, r in failures:
        typer.echo(f"skipped {f}: {r}", err=True)
    if json_out:
        typer.echo(_json.dumps(summary.as_dict(), indent=1))
    else:
        typer.echo(f"{summary.output}: {summary.rows} rows from {summary.clips} clips "
                   f"({summary.computed} computed, {summary.reused} reused, {len(summary.failed)} failed) "
                   f"in {summary.seconds:.1f} s")


@app.command("train")
def train_cmd(
    config: str = typer.Argument(..., help="Training config (YAML); see edgeqmoe/train/config.py."),
    cache: Optional[str] = typer.Option(None, help="Use this embedding cache file instead of data.dataset."),
    no_final: bool = typer.Option(False, "--no-final", help="Only the protocol folds, no final bundle."),
):
    """Train a head or a MoE: protocol folds, summary, final bundle and model card."""
    import json as _json

    from .settings import SettingsError

    try:
        from .train.config import load_config
        from .train.run import run_training
    except ImportError as e:
        if "torch" not in str(e):
            raise
        fail("training needs torch, which the daemon does not: pip install 'edgeqmoe[train]' (or "
             "tools/setup.sh --train), which pins torch==2.13.0, the CPU build")

    try:
        cfg = load_config(config)
    except SettingsError as e:
        fail(str(e))
    try:
        summary = run_training(cfg, cache=cache, log=typer.echo, final=not no_final)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(_json.dumps({k: v for k, v in summary.items() if k != "cache"}, indent=1))


@app.command("eval")
def eval_cmd(
    bundle: Optional[str] = typer.Argument(None, help="Model bundle (.eqm)."),
    profile: Optional[str] = typer.Option(None, help="Evaluate the bundle of this profile instead."),
    data: str = typer.Option(..., "--data", help="Dataset: metadata CSV or folder."),
    folds: Optional[List[int]] = typer.Option(None, "--fold", help="Only these folds (repeat)."),
    cache: str = typer.Option("cache", help="Embedding cache folder."),
    kernel: Optional[str] = typer.Option(None, help="Kernel variant (ref, generic, simd, or a name)."),
    weights: Optional[str] = typer.Option(None, help="Embedder weights path."),
    json_out: bool = typer.Option(False, "--json", help="Print all results as JSON."),
    events: bool = typer.Option(True, "--events/--no-events", help="Also the events the daemon raises on each "
                                "clip: right, wrong-class or none, per class."),
    open_set: Optional[str] = typer.Option(None, "--open-set", help="Also: a corpus of non-target audio "
                                           "(tools/negatives.py build): per category and per source, the share of "
                                           "windows decided as a class and target events per hour, each measured "
                                           "by an open-set rule trained without that category (source)."),
    shipped_rule: bool = typer.Option(False, "--shipped-rule", help="--open-set with the shipped rule as it is "
                                      "(fast; flatters where the rule was trained on the corpus)."),
):
    """Score a bundle on a dataset with the torch-free runtime: clips, windows, and the
    events the profile's daemon raises."""
    import json as _json

    from .audio.datasets import DatasetError
    from .embed import WeightsError
    from .model.bundle import BundleError
    from .train.evaluate import evaluate

    if profile:
        from .daemon.profiles import ProfileError, load_profile

        try:
            p = load_profile(profile)
        except ProfileError as e:
            fail(str(e))
        bundle = p.model.bundle_path()
    if not bundle:
        fail("give a bundle path or --profile NAME")
    try:
        r = evaluate(bundle, data, cache, folds or (), kernel, weights)
    except (BundleError, DatasetError, WeightsError, ValueError) as e:
        fail(str(e))
    if events or open_set:
        from .daemon import evaluate as E
        from .daemon.pipeline import PipelineError
        from .daemon.profiles import load_profile as _load

        say = (lambda m: None) if json_out else (lambda m: typer.echo(f"  ... {m}", err=True))
        try:
            prof = p if profile else _load("balanced", {"model": {"bundle": str(bundle), "kernel": kernel or "simd",
                                                                  **({"weights": weights} if weights else {})}})
            if events:
                r["events"] = E.event_figures(prof, data, progress=say, folds=folds or ())
            if open_set:
                r["open_set"] = E.open_set_figures(prof, open_set, None if shipped_rule else data, progress=say)
        except (PipelineError, DatasetError, ValueError, OSError) as e:
            fail(str(e))
    if json_out:
        typer.echo(_json.dumps(r, indent=1, default=str))
        return
    typer.echo(f"{r['bundle']} on {r['dataset']}: weighted F1 {r['weighted_f1']:.4f}, accuracy "
               f"{r['accuracy']:.4f}, macro F1 {r['macro_f1']:.4f} ({r['n']} clips, {r['n_windows']} windows, "
               f"window accuracy {r['window_accuracy']:.4f})")
    if "events" in r:
        typer.echo(E.format_events(r["events"]))
    if "open_set" in r:
        typer.echo(E.format_open_set(r["open_set"]))


@weights_app.command("where")
def weights_where(name: str = typer.Argument("mn04"), weights: Optional[str] = typer.Option(None)):
    """Show where the weights are looked for and which file is used."""
    from .embed.weights import WEIGHTS, WeightsError, candidates, resolve

    if name not in WEIGHTS:
        fail(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    spec = WEIGHTS[name]
    for p in candidates(spec, weights):
        typer.echo(f"{'found ' if p.is_file() else 'absent'} {p}")
    try:
        typer.echo(f"using {resolve(spec, weights)} (sha256 {spec.sha256})")
    except WeightsError as e:
        fail(str(e))


@weights_app.command("fetch")
def weights_fetch(name: str = typer.Argument("mn04"),
                  to: Optional[str] = typer.Option(None, help="Folder to save into (default: the user cache).")):
    """Download the public release of the weights and verify its sha256."""
    from .embed.weights import WEIGHTS, WeightsError, fetch

    if name not in WEIGHTS:
        fail(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
    try:
        path = fetch(WEIGHTS[name], to)
    except WeightsError as e:
        fail(str(e))
    typer.echo(f"saved {path}")


@weights_app.command("convert")
def weights_convert(path: Optional[str] = typer.Argument(None, help="The mn04 weights file or its folder (default: "
                                                                      "the usual search)."),
                    to: str = typer.Option("all", help="int8 (our integer kernels), onnx (fp32 for ONNX Runtime), "
                                                       "or all."),
                    out: Optional[str] = typer.Option(None, help="Write here instead of the converted-embedder "
                                                                 "folder (with --to int8 or onnx).")):
    """Convert the mn04 weights (sha256 checked) for the daemon's runtimes: our integer kernels and ONNX Runtime.
    The daemon converts them at its first start too; neither needs torch."""
    import time as _time

    from .embed import mn04_int8
    from .embed.mn04_onnx import convert, onnxruntime_available
    from .embed.weights import WeightsError

    if to not in ("all", "int8", "onnx"):
        fail(f"--to {to!r}: choose int8, onnx or all")
    if out and to == "all":
        fail("--out names one file: choose it with --to int8 or --to onnx")
    targets = ["int8", "onnx"] if to == "all" else [to]
    if path and not out:
        try:
            path = _adopt_weights(path)
        except WeightsError as e:
            fail(str(e))
    for target in targets:
        if target == "onnx" and not onnxruntime_available():
            if to == "onnx":
                fail("converting for ONNX Runtime needs onnxruntime and onnx: pip install onnxruntime onnx")
            typer.echo("onnx: skipped (onnxruntime and onnx are not installed; the int8 profiles do not need them)")
            continue
        t0 = _time.perf_counter()
        try:
            dest = mn04_int8.convert(path, out) if target == "int8" else convert(path, out)
        except WeightsError as e:
            fail(str(e))
        typer.echo(f"{target}: wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB) in {_time.perf_counter() - t0:.2f} s")


def _adopt_weights(path: str) -> str:
    """Weights a user converts from a place ``run`` does not look (a download folder)
    are copied (sha256 checked) into the weights cache, where it does: the weights
    converted are the weights the daemon then uses. Returns the path to convert from."""
    import os
    import shutil

    from .embed.weights import MN04_WEIGHTS, WeightsError, cache_dir, resolve

    src = resolve(MN04_WEIGHTS, path)
    try:
        found = resolve(MN04_WEIGHTS)
    except WeightsError:
        found = None
    if found is not None:
        if found.resolve() != src.resolve():
            typer.echo(f"weights: {src} is the same file as {found} (sha256 checked), which 'edgeqmoe run' uses")
        return str(found)
    dest = cache_dir() / MN04_WEIGHTS.filename
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as e:
        raise WeightsError(f"cannot copy {src} into {dest.parent} ({e}); set EDGEQMOE_WEIGHTS_DIR to the folder "
                           f"of {src.name} instead, or model.weights in the profile") from None
    typer.echo(f"weights: copied {src} into {dest}, where 'edgeqmoe run' finds them")
    return str(dest)


mqtt_app = typer.Typer(no_args_is_help=True, help="The MQTT link of a profile: check it before the daemon uses it.")
app.add_typer(mqtt_app, name="mqtt")


@mqtt_app.command("check")
def mqtt_check(profile: str = typer.Option(..., "--profile", "-p", help="Profile name or path with an mqtt: section."),
               device: Optional[str] = typer.Option(None, help="The device name the daemon would use."),
               timeout: float = typer.Option(10.0, help="Seconds to wait for the broker.")):
    """Connect to the profile's MQTT broker once (TLS, user, password) and say how it went; publishes nothing."""
    from .daemon.mqtt import MqttError, check

    p = _profile_or_fail(profile)
    if not p.mqtt.host:
        fail(f"{p.source_file}: no mqtt.host: add an mqtt: section (docs/mqtt.md)")
    try:
        typer.echo(check(p.mqtt, device or p.device_name, timeout))
    except MqttError as e:
        fail(str(e))


@bench_app.command("kernels")
def bench_kernels(
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON to this path."),
    markdown_path: Optional[str] = typer.Option(None, "--markdown", help="Also write a Markdown table to this path."),
    in_features: int = typer.Option(1024, help="Inputs of the single layer and of the head."),
    out_features: int = typer.Option(640, help="Outputs of the single layer."),
    hidden: List[int] = typer.Option([640, 320], help="Hidden sizes of the head (repeat the option)."),
    classes: int = typer.Option(10, help="Outputs of the head."),
    batch: int = typer.Option(1, min=1, max=64, help="Rows per call."),
    rounds: int = typer.Option(20, min=1, help="Rounds over all implementations."),
    per_round: int = typer.Option(100, min=1, help="Timed calls of each implementation per round."),
    all_variants: bool = typer.Option(False, "--all-variants", help="Also time every other kernel variant."),
    formats: Optional[List[str]] = typer.Option(None, "--format", help="Only these packed formats (repeat)."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the torch rows (ratios are then empty)."),
):
    """Packed kernels against torch fp32, torch dynamic int8 and numpy: one thread,
    a single layer and the whole head, median and p99 per call."""
    from .bench.kernels import format_markdown, format_table, run_bench, write_json
    from .kernels import FORMATS

    for f in formats or []:
        if f not in FORMATS:
            raise typer.BadParameter(f"unknown format {f!r}; known: {', '.join(FORMATS)}", param_hint="--format")
    result = run_bench(in_features, out_features, tuple(hidden), classes, batch, rounds, per_round,
                       all_variants, list(formats) if formats else None, not no_torch)
    typer.echo(format_table(result))
    if json_path:
        write_json(result, json_path)
        typer.echo(f"\nwrote {json_path}")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(format_markdown(result) + "\n")
        typer.echo(f"wrote {markdown_path}")


@bench_app.command("embedders")
def bench_embedders(
    embedder: Optional[List[str]] = typer.Option(None, "--embedder", "-e", help="Embedders to time (repeat); default all."),
    window: float = typer.Option(1.0, help="Window length in seconds."),
    rounds: int = typer.Option(10, min=1), per_round: int = typer.Option(50, min=1),
    weights: Optional[str] = typer.Option(None, help="Path of the mn04 weights."),
    audio: Optional[str] = typer.Option(None, help="An audio file to cut windows from (default: noise)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON."),
):
    """Time per window of each embedder (front end included), one thread."""
    import json as _json

    from .bench.embedders import format_table, run_bench
    from .embed import EMBEDDERS, WeightsError

    names = list(embedder) if embedder else list(EMBEDDERS)
    x = None
    if audio:
        from .audio.io import AudioReadError, load

        try:
            x = load(audio, 16000)
        except AudioReadError as e:
            fail(str(e))
    try:
        result = run_bench(names, window, 16000, rounds, per_round, weights, x)
    except (WeightsError, ValueError) as e:
        fail(str(e))
    typer.echo(format_table(result))
    if json_path:
        with open(json_path, "w") as f:
            _json.dump(result, f, indent=1)


@bench_app.command("models")
def bench_models(
    bundles: Optional[List[str]] = typer.Argument(None, help="Bundles (default: the shipped ones)."),
    windows: int = typer.Option(2000, min=4, help="Windows per model."),
    markdown_path: Optional[str] = typer.Option(None, "--markdown", help="Also write a Markdown table."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON."),
):
    """Head latency, memory, energy per inference and size of every model bundle."""
    import json as _json

    from .bench.models import format_markdown, run_bench
    from .daemon.profiles import SHIPPED_BUNDLES
    from .model.bundle import BundleError

    paths = list(bundles) if bundles else sorted(str(p) for p in SHIPPED_BUNDLES.glob("*.eqm"))
    try:
        res = run_bench(paths, windows)
    except BundleError as e:
        fail(str(e))
    md = format_markdown(res)
    typer.echo(md)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(md + "\n")
    if json_path:
        with open(json_path, "w") as f:
            _json.dump(res, f, indent=1)


@bench_app.command("listening")
def bench_listening(
    profile: Optional[List[str]] = typer.Option(None, "--profile", "-p", help="Profiles (repeat); default all."),
    data: Optional[str] = typer.Option(None, "--data", help="A folder of target sounds, replayed in real time."),
    source: Optional[str] = typer.Option(None, "--source", help="Instead of --data: mic or mic:NAME."),
    warm: float = typer.Option(5.0, min=0.0, help="Seconds after the first window before measuring."),
    span: float = typer.Option(30.0, min=2.0, help="Seconds measured."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON."),
):
    """The daemon's steady-state CPU per second of audio against what its inference takes."""
    import json as _json
    import tempfile as _tempfile

    from .bench.listening import format_table, run_bench, target_file
    from .daemon.profiles import available_profiles

    if (data is None) == (source is None):
        fail("give --data FOLDER (target sounds, replayed in real time) or --source mic[:NAME]")
    names = list(profile) if profile else list(available_profiles())
    with _tempfile.TemporaryDirectory(prefix="edgeqmoe-listening-") as tmp:
        if data is not None:
            try:
                source = "file:" + target_file(data, warm + span + 30, os.path.join(tmp, "targets.wav"))
            except (OSError, ValueError) as e:
                fail(f"--data {data}: {e}")
        try:
            result = run_bench(names, source, warm, span)
        except RuntimeError as e:
            fail(str(e))
    typer.echo(format_table(result))
    if json_path:
        with open(json_path, "w") as f:
            _json.dump(result, f, indent=1)


@bench_app.command("latency")
def bench_latency(
    profile: Optional[List[str]] = typer.Option(None, "--profile", "-p", help="Profiles to time (repeat); default all."),
    data: str = typer.Option(..., "--data", help="Audio to replay: a dataset (CSV or folder) or a folder of files."),
    windows: int = typer.Option(2000, min=10, help="Windows per profile."),
    window: Optional[float] = typer.Option(None, help="Window length in seconds (default: each profile's; its hop keeps its share of the window)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Also write the results as JSON."),
):
    """Per-window latency of each profile's pipeline, and stable vs uniform routing."""
    import json as _json
    from pathlib import Path as _Path

    from .audio.datasets import AUDIO_EXT, DatasetError, read_dataset
    from .bench.latency import format_table, run_bench
    from .daemon.pipeline import PipelineError
    from .daemon.profiles import ProfileError, available_profiles

    try:
        paths = [c.path for c in read_dataset(data).clips]
    except DatasetError:
        paths = sorted(str(p) for p in _Path(data).rglob("*") if p.suffix.lower() in AUDIO_EXT)
    if not paths:
        fail(f"no audio found in {data}")
    names = list(profile) if profile else list(available_profiles())
    try:
        res = run_bench(names, paths, windows, window)
    except (ProfileError, PipelineError) as e:
        fail(str(e))
    typer.echo(format_table(res))
    if json_path:
        with open(json_path, "w") as f:
            _json.dump(res, f, indent=1, default=str)


def main():
    app()


if __name__ == "__main__":
    main()
