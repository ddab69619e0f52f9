import sys
from kilnet.cli import main
sys.exit(main())
