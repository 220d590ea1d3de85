"""The launcher: the command line (cli, options), the checks that turn flags into a JobConfig (job), running the
pipeline on a Beam runner (runner), and what it prints while and after it runs (progress, summary)."""
