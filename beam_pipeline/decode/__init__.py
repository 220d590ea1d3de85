"""The decode stage: read one image's bytes through fsspec within the read policy (reading), decode and resize them
with Pillow (preprocess), on a thread pool inside a DoFn that turns every failure into an error row (dofn)."""
