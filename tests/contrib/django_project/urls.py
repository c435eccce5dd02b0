"""One view: the number of items, counted through the pool."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from .shop.models import Item


def count(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"items": Item.objects.count()})


urlpatterns = [path("count", count)]
