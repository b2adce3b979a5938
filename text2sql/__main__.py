from text2sql.cli import main

raise SystemExit(main())
