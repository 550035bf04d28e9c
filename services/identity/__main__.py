"""``python -m services.identity``: serve the identity API and consumers until SIGTERM.

``python -m services.identity staff-add EMAIL FIRST LAST ROLE[,ROLE]`` creates a staff account
(roles: service_desk, security_administrator); the password is read from standard input.
"""

from __future__ import annotations

import asyncio
import sys

from services.identity.bootstrap import build
from services.identity.settings import IdentitySettings
from shared.logging import configure_logging


async def _staff_add(settings: IdentitySettings, email: str, first: str, last: str, roles: str) -> None:
    from services.identity.domain.normalise import normalise_email
    from services.identity.service_layer.administration import Person, create_staff_account, operator_here

    runtime = build(settings)
    await runtime.db.command("ping")
    from shared.storage.mongo import ensure_indexes
    from services.identity.adapters.stores import INDEXES

    await ensure_indexes(runtime.db, INDEXES)
    password = sys.stdin.readline().rstrip("\n")
    staff_id = await create_staff_account(
        runtime.identity, Person(first, last, normalise_email(email), "en"), roles.split(","), password,
        actor=operator_here(),
    )
    print(staff_id)
    await runtime.mongo.close()
    runtime.identity.hasher.close()


def main(argv: list[str]) -> None:
    settings = IdentitySettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    if argv[:1] == ["staff-add"] and len(argv) == 5:
        asyncio.run(_staff_add(settings, *argv[1:]))
        return
    if argv:
        raise SystemExit(__doc__)
    asyncio.run(build(settings).serve())


if __name__ == "__main__":
    main(sys.argv[1:])
