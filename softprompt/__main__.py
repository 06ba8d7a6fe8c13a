from softprompt.cli import main

raise SystemExit(main())
