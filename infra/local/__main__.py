"""python -m infra.local up|down [--stack local] [--config KEY=VALUE ...]"""

import sys

from infra.local.stack import main

if __name__ == "__main__":
    sys.exit(main())
