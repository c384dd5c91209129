import sys

from tools.device_check.cli import main

sys.exit(main())
