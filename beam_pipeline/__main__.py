"""`python -m beam_pipeline`: runs the labelling job."""

import sys

from beam_pipeline.launch.cli import command

sys.exit(command())
