import sys

from wsnic_trio.cli.main import main

sys.exit(main())
