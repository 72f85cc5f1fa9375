"""thinktune: fine-tune reasoning LLMs end to end, from a YAML file to a served model."""

__version__ = "0.1.0"
