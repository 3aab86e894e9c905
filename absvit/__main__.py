import sys

from absvit.cli import main

sys.exit(main())
