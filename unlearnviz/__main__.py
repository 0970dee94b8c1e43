import sys

from unlearnviz.cli import main

sys.exit(main())
