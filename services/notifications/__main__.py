"""``python -m services.notifications``: read the settings, wire the service, serve until stopped."""

from services.notifications.bootstrap import build
from services.notifications.settings import NotificationSettings
from shared.runtime.service import serve_process


def main() -> None:
    settings = NotificationSettings()
    serve_process(settings, build(settings).runtime)


if __name__ == "__main__":
    main()
