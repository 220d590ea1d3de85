"""`python -m beam_pipeline`: runs the labelling job."""

import sys

from beam_pipeline.cli import main

sys.exit(main())
