"""Reading the daemon's logs back: summaries, plots, comparisons between runs."""
