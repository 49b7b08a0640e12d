import sys

from domainbed.scripts.benchmark import main

sys.exit(main())
