"""``python -m services.notifications``: read the settings, wire the service, serve until stopped."""

import asyncio

from services.notifications.bootstrap import build
from services.notifications.settings import NotificationSettings
from shared.logging import configure_logging


def main() -> None:
    settings = NotificationSettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    asyncio.run(build(settings).runtime.serve())


if __name__ == "__main__":
    main()
