"""`python -m rasa_gpt3.nlu_server`: the NLU server (what `rasa-gpt3 nlu serve` runs)."""

import sys

from rasa_gpt3.nlu_server.command import main

if __name__ == "__main__":
    sys.exit(main())
