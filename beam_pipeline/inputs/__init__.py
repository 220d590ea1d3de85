"""The inputs stage: what each `--input` names (specs), the launch checks on it (checks), manifests (manifests),
their expansion into rows inside the pipeline (expand), and --skip-labelled's join with earlier output
(incremental)."""
