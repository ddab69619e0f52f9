import sys

if len(sys.argv) > 1 and sys.argv[1] in ("--cmake-dir", "--prefix", "--include-dir", "--lib-dir"):
    # Paths of the C++ library a wheel ships (kilnet/_cmake.py): the CLI is not imported for them.
    from kilnet._cmake import main as _paths_main
    sys.exit(_paths_main(sys.argv[1:]))

from kilnet.cli import main
sys.exit(main())
