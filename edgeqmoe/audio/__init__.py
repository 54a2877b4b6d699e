"""Audio: reading files, resampling, windowing (offline and streaming), log-mel front
ends, datasets. numpy, soundfile, soxr; never torch."""
