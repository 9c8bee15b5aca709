from rlhf_helpers.cli import main

raise SystemExit(main())
