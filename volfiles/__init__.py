"""The volfile format: parser, generator, examples."""
