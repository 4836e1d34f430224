import sys

from recon_core.cli import main

sys.exit(main())
