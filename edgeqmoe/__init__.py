"""edgeqmoe: an always-on sound classifier with bit-packed low-bit heads."""

__version__ = "0.1.0"
