from tfi.cli import main

raise SystemExit(main())
