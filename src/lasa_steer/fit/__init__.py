"""``lasa fit``: from multilingual harmful/harmless prompts to a calibrated vector file."""

from .pipeline import FitConfig, FitResult, capture_model, fit, write_report

__all__ = ["FitConfig", "FitResult", "capture_model", "fit", "write_report"]
