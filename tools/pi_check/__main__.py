import sys

from tools.pi_check.cli import main

sys.exit(main())
