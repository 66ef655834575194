from lait.cli import main

raise SystemExit(main())
