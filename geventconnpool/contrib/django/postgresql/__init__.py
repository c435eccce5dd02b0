"""``ENGINE: "geventconnpool.contrib.django.postgresql"``: Django's PostgreSQL backend on a
geventconnpool pool. Django imports :mod:`.base` (``DatabaseWrapper``) from here."""

__all__: list[str] = []
