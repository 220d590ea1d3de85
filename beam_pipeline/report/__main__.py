"""`python -m beam_pipeline.report OUTPUT --html report.html`."""

import sys

from beam_pipeline.report.cli import main

sys.exit(main())
