"""The ``edgeqmoe`` command line. Commands parse their options, build settings and
call one function each; the work lives in the packages."""

from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="edgeqmoe: an always-on sound classifier with bit-packed low-bit heads.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (each prints what it measured and the machine).")
app.add_typer(bench_app, name="bench")


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


def main():
    app()


if __name__ == "__main__":
    main()
