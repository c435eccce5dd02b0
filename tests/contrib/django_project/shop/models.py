"""One model, enough for ORM queries, transactions and a migration."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)
    n = models.IntegerField(default=0)

    class Meta:
        app_label = "shop"
