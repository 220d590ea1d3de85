"""The model stage: resolve `--model` and `--backend` (resolve), find its files (source), stage them for remote
workers (staging), load them on a runtime (load, backends/), read the label file (labels), and serve batches to
RunInference (handler)."""
