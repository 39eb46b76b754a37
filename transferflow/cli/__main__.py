import sys

from transferflow.cli.main import main

sys.exit(main())
