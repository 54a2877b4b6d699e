"""The ``edgeqmoe`` command line. Commands parse their options, build settings and
call one function each; the work lives in the packages."""

from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="edgeqmoe: an always-on sound classifier with bit-packed low-bit heads.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (each prints what it measured and the machine).")
app.add_typer(bench_app, name="bench")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained embedder weights: where they are, fetching them.")
app.add_typer(weights_app, name="weights")


def fail(message: str, code: int = 2):
    """One clear paragraph on stderr, then exit with ``code``."""
    typer.echo(f"edgeqmoe: {message}", err=True)
    raise typer.Exit(code)


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


def main():
    app()


if __name__ == "__main__":
    main()
