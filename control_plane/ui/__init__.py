"""The console: web pages under ``/ui`` for SREs (health, incidents, control, requests) and
finance (spend), served by the API process with the API's keys, roles and tenant binding."""

from __future__ import annotations
