"""The restitution service: not built yet (see the issue tracker). The package exists so that the
architecture rules (lint-imports) already cover it."""
