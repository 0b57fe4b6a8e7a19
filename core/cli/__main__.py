import sys

from finetty.core.cli.commands import main

sys.exit(main())
