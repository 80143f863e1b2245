"""The `asr` command-line interface (wires model, training, lm, service and client together)."""
