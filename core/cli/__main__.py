import sys

from finetty.core.cli import main

sys.exit(main())
