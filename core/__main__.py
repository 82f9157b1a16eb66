import sys

from ipfacediff.cli import main

sys.exit(main())
