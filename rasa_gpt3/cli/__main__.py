"""`python -m rasa_gpt3.cli`, the same as the `rasa-gpt3` console script."""

import sys

from rasa_gpt3.cli import main

sys.exit(main())
