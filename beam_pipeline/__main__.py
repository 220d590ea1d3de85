"""`python -m beam_pipeline`: runs the labelling job."""

import sys

from beam_pipeline.launch.cli import main

sys.exit(main())
