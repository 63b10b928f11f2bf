"""Embedded end-to-end demo: tiny teacher → LCM-LoRA → steps-vs-quality report (filled in by the demo work)."""
