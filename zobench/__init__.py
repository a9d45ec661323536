"""zobench: benchmark zeroth-order optimizers against first-order fine-tuning."""

__version__ = "0.1.0"
