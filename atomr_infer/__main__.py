from atomr_infer._cli import main

raise SystemExit(main())
