"""Command-line converters: audio on disk -> TFDS datasets (see each script's --help)."""
