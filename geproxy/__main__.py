"""``python -m geproxy``: the same entry point as the gevent-etcdproxy command."""

from geproxy.cli import main  # geproxy.cli monkey-patches on import, first thing

import sys  # noqa: E402

sys.exit(main())
