"""Tests Django's own runner runs against the backend (``manage.py test``): a test database is
created, migrated, used through the pool (TestCase's transactions, TransactionTestCase's
flushes, greenlets of their own) and destroyed."""

from __future__ import annotations

import gevent
from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from .models import Item


class ItemTests(TestCase):
    def test_orm_in_the_test_database(self) -> None:
        Item.objects.create(name="a", n=1)
        self.assertEqual(Item.objects.count(), 1)
        self.assertTrue(connection.settings_dict["NAME"].startswith("test_"))

    def test_on_commit_under_testcase(self) -> None:
        calls: list[int] = []
        with self.captureOnCommitCallbacks(execute=True):
            with transaction.atomic():
                Item.objects.create(name="b")
                transaction.on_commit(lambda: calls.append(1))
        self.assertEqual(calls, [1])


class GreenletTests(TransactionTestCase):
    def test_greenlets_share_the_pool(self) -> None:
        def one(i: int) -> int:
            Item.objects.create(name=f"g{i}", n=i)
            return Item.objects.filter(n=i).count()

        jobs = [gevent.spawn(one, i) for i in range(20)]
        gevent.joinall(jobs, raise_error=True)
        self.assertEqual([j.value for j in jobs], [1] * 20)
        self.assertEqual(Item.objects.count(), 20)
